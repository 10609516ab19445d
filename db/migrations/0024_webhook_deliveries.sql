-- Job webhook deliveries (worker/webhooks.py): one row per event sent to a job's webhook URL
-- (job.running, job.succeeded, job.failed, job.dead, job.cancelled), written by the worker after
-- each try and keyed by the event's `webhook-id` (the Standard Webhooks header: the same on every
-- try, so a receiver can tell a retry from a new event). `result` is `pending` while the event is
-- still being tried (a worker stopped between two tries leaves it so), then `delivered`, `failed`
-- (given up after its tries, or answered with a status that is not retried) or `refused` (the URL
-- may not be called). `status_code` and `error` are the last try's (error: the exception, or the
-- start of a non-2xx answer's body, made one line and storable, at most 500 characters);
-- `duration_ms` is how long the last try took. One row per event, not per try: the page shows
-- what became of each event, a try's own figures are in the worker's log.
--
-- The rows go with their job (ON DELETE CASCADE: retention's prune_jobs deletes jobs in batches,
-- and the index below, which leads with job_id, is what the cascade's delete looks rows up with).
-- The jobs' counters of failed deliveries (webhook_failures, webhook_failed_at: 0018) keep their
-- meaning for `pgmq-worker stats`; the worker now adds to them in the statement that records a
-- delivery's failed or refused end, no longer at its next heartbeat.
--
-- Grants: a `worker` role writes the rows, a `web` role reads them (the dashboard's job page);
-- through a trigger on pgmq_worker.access (0017) for roles granted later, and here for the roles
-- granted before this migration. No Supabase `authenticated` policy: like job_steps, only the
-- web process reads them.
CREATE TABLE pgmq_worker.webhook_deliveries (
    webhook_id text PRIMARY KEY CHECK (length(webhook_id) BETWEEN 1 AND 100),
    job_id uuid NOT NULL REFERENCES pgmq_worker.jobs (id) ON DELETE CASCADE,
    event text NOT NULL CHECK (length(event) BETWEEN 1 AND 100),  -- the body's `type`: job.<status>
    result text NOT NULL CHECK (result IN ('pending', 'delivered', 'failed', 'refused')),
    tries integer NOT NULL CHECK (tries >= 0),  -- 0: refused before any try (its body could not be made)
    status_code integer,  -- the last try's HTTP status (NULL: no answer)
    error text CHECK (length(error) <= 500),  -- worker/store/webhook_deliveries.py MAX_ERROR_CHARS
    first_tried_at timestamptz NOT NULL,
    last_tried_at timestamptz NOT NULL,
    duration_ms double precision  -- the last try's
);
CREATE INDEX webhook_deliveries_job_idx ON pgmq_worker.webhook_deliveries (job_id, first_tried_at);
ALTER TABLE pgmq_worker.webhook_deliveries ENABLE ROW LEVEL SECURITY;  -- no policy: the roles granted below
COMMENT ON TABLE pgmq_worker.webhook_deliveries IS
    'pgmq-worker: job webhook events and what became of their delivery (one row per event)';

CREATE FUNCTION pgmq_worker.grant_webhook_deliveries(role_name name, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RETURN;
    END IF;
    EXECUTE format('REVOKE ALL ON pgmq_worker.webhook_deliveries FROM %I', role_name);  -- its kind may have changed
    IF kind = 'worker' THEN  -- no DELETE: the rows go with their job
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON pgmq_worker.webhook_deliveries TO %I', role_name);
        PERFORM pgmq_worker._policy('webhook_deliveries', role_name, 'ALL');
    ELSIF kind = 'web' THEN
        EXECUTE format('GRANT SELECT ON pgmq_worker.webhook_deliveries TO %I', role_name);
        PERFORM pgmq_worker._policy('webhook_deliveries', role_name, 'SELECT');
    END IF;
END
$$;

CREATE FUNCTION pgmq_worker.grant_webhook_deliveries_on_access() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgmq_worker.grant_webhook_deliveries(NEW.role, NEW.kind);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pgmq_worker.grant_webhook_deliveries(name, text),
    pgmq_worker.grant_webhook_deliveries_on_access() FROM PUBLIC;

CREATE TRIGGER access_grant_webhook_deliveries AFTER INSERT OR UPDATE ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_webhook_deliveries_on_access();

SELECT pgmq_worker.grant_webhook_deliveries(role, kind) FROM pgmq_worker.access;
