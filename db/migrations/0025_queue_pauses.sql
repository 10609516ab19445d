-- Paused queues (queues/pauses.py, worker/pauses.py): while a queue has a row here, no worker
-- reads it; sending into it goes on (its messages wait), and deliveries already running finish.
--
-- `pgmq-worker queue pause`, `queues.pause` and the dashboard's Pause insert the row, resume
-- deletes it. Each worker keeps the paused set of its own queues in memory, so a read costs
-- nothing more: it reads the table as it starts, again as soon as it hears the trigger below
-- (a NOTIFY on `pgmq_worker.queue_pauses`, sent at the commit of any change), and every poll
-- interval besides, which converges a worker that cannot LISTEN (behind a transaction pooler)
-- or that missed the notification while its listening connection was down.
CREATE TABLE pgmq_worker.queue_pauses (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text CHECK (length(paused_by) <= 200),  -- who: the CLI's user@host, "dashboard"
    reason text CHECK (length(reason) <= 500)  -- why, as the operator said it
);
ALTER TABLE pgmq_worker.queue_pauses ENABLE ROW LEVEL SECURITY;  -- no policy: the roles granted below
COMMENT ON TABLE pgmq_worker.queue_pauses IS 'pgmq-worker: paused queues, which no worker reads until resumed';

CREATE FUNCTION pgmq_worker.notify_queue_pause() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The payload is only a hint: a worker reads the table again, whichever queue changed.
    PERFORM pg_notify('pgmq_worker.queue_pauses', coalesce(NEW.queue, OLD.queue));
    RETURN NULL;
END
$$;
CREATE TRIGGER queue_pauses_notify AFTER INSERT OR UPDATE OR DELETE ON pgmq_worker.queue_pauses
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.notify_queue_pause();

-- Grants: a worker role reads the pauses, a web role (the dashboard's Pause and Resume) writes
-- them. Given through a trigger on pgmq_worker.access (0017), as 0022 does, so roles granted
-- later get them too; and here, now, to the roles granted before this migration.
CREATE FUNCTION pgmq_worker.grant_queue_pauses(role_name name, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RETURN;
    END IF;
    EXECUTE format('REVOKE ALL ON pgmq_worker.queue_pauses FROM %I', role_name);  -- its kind may have changed
    IF kind = 'worker' THEN
        EXECUTE format('GRANT SELECT ON pgmq_worker.queue_pauses TO %I', role_name);
        PERFORM pgmq_worker._policy('queue_pauses', role_name, 'SELECT');
    ELSIF kind = 'web' THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.queue_pauses TO %I', role_name);
        PERFORM pgmq_worker._policy('queue_pauses', role_name, 'ALL');
    END IF;
END
$$;

CREATE FUNCTION pgmq_worker.grant_queue_pauses_on_access() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgmq_worker.grant_queue_pauses(NEW.role, NEW.kind);
    RETURN NULL;
END
$$;

CREATE TRIGGER grant_queue_pauses AFTER INSERT OR UPDATE ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_queue_pauses_on_access();

REVOKE ALL ON FUNCTION pgmq_worker.grant_queue_pauses(name, text),
    pgmq_worker.grant_queue_pauses_on_access() FROM PUBLIC;

SELECT pgmq_worker.grant_queue_pauses(role, kind) FROM pgmq_worker.access;
