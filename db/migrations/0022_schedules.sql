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

-- Roles granted access before this migration (0017: pgmq_worker.grant_access): workers write
-- both tables, web processes read them.
DO $$
DECLARE
    r record;
    t text;
BEGIN
    FOR r IN SELECT g.role, g.kind FROM pgmq_worker.access AS g JOIN pg_roles ON rolname = g.role
             WHERE g.kind IN ('worker', 'web') LOOP
        FOREACH t IN ARRAY ARRAY['schedule_ticks', 'schedules'] LOOP
            IF r.kind = 'worker' THEN
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.%I TO %I', t, r.role);
                PERFORM pgmq_worker._policy(t, r.role, 'ALL');
            ELSE
                EXECUTE format('GRANT SELECT ON pgmq_worker.%I TO %I', t, r.role);
                PERFORM pgmq_worker._policy(t, r.role, 'SELECT');
            END IF;
        END LOOP;
    END LOOP;
END
$$;
