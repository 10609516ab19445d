-- Periodic jobs (worker/schedules.py, worker/scheduler.py).
--
-- schedule_ticks: one row per (schedule, tick), the key that makes a tick run once. Every worker
-- serving a schedule's queue tries each tick: in one transaction it inserts the tick's row (ON
-- CONFLICT DO NOTHING) and, only if the row is its own, sends the message (and the job row) and
-- notes the message here. A second worker's insert waits on the first one's uncommitted key and
-- then finds it taken; if the first rolls back, the second inserts and sends. The tick is the
-- time the cron expression gives (whole seconds, UTC), never a clock reading, so workers whose
-- clocks are a little apart still write the same key. The row also records which message and job
-- the tick became: deliveries look it up by (queue, msg_id) for ctx.scheduled_at, which works
-- for queues without job rows too and leaves the payload as declared.
CREATE TABLE pgmq_worker.schedule_ticks (
    schedule text NOT NULL,
    tick timestamptz NOT NULL,
    queue text NOT NULL,
    msg_id bigint,
    job_id uuid,  -- the tick's pgmq_worker.jobs row (NULL for a queue without job rows)
    sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);
CREATE INDEX schedule_ticks_message_idx ON pgmq_worker.schedule_ticks (queue, msg_id);
CREATE INDEX schedule_ticks_job_idx ON pgmq_worker.schedule_ticks (job_id) WHERE job_id IS NOT NULL;
COMMENT ON TABLE pgmq_worker.schedule_ticks IS
    'pgmq-worker: one row per schedule tick sent (the unique key makes it once), with its message and job';

-- The schedules the workers declare (upserted by each worker's scheduler as it starts), so a
-- process that does not import the handler modules (a dashboard) can list them.
CREATE TABLE pgmq_worker.schedules (
    name text PRIMARY KEY,
    queue text NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    catch_up text NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgmq_worker.schedules IS 'pgmq-worker: the schedules the workers declare, as last started';

ALTER TABLE pgmq_worker.schedule_ticks ENABLE ROW LEVEL SECURITY;  -- no policy: the roles granted below
ALTER TABLE pgmq_worker.schedules ENABLE ROW LEVEL SECURITY;

-- Grants: a worker role writes both tables, a web role reads them (a dashboard). Given through a
-- trigger on pgmq_worker.access (0017), which pgmq_worker.grant_access fills before it grants the
-- rest, so roles granted later get them too without replacing grant_access; and here, now, to
-- the roles granted before this migration.
CREATE FUNCTION pgmq_worker.grant_schedules(role_name name, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
BEGIN
    IF kind NOT IN ('worker', 'web') OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['schedule_ticks', 'schedules'] LOOP
        IF kind = 'worker' THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.%I TO %I', t, role_name);
            PERFORM pgmq_worker._policy(t, role_name, 'ALL');
        ELSE
            EXECUTE format('GRANT SELECT ON pgmq_worker.%I TO %I', t, role_name);
            PERFORM pgmq_worker._policy(t, role_name, 'SELECT');
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION pgmq_worker.grant_schedules_on_access() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgmq_worker.grant_schedules(NEW.role, NEW.kind);
    RETURN NULL;
END
$$;

CREATE TRIGGER grant_schedules AFTER INSERT OR UPDATE ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_schedules_on_access();

SELECT pgmq_worker.grant_schedules(role, kind) FROM pgmq_worker.access;
