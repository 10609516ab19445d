-- The worker registry, and the job-row timestamps `pgmq-worker stats` reads.
--
-- pgmq_worker.workers: one row per running worker process, upserted by its heartbeat (every
-- PGMQ_WORKER_REGISTRY_HEARTBEAT), marked `draining` when its stop starts and deleted when it
-- stops cleanly. A reader shows a row `stale` once its last heartbeat is older than three of
-- the intervals the row itself records (`heartbeat`), so any reader can judge any worker; a
-- worker that was killed leaves its row behind, and every worker's heartbeat deletes rows whose
-- heartbeat is older than an hour (or ten of their intervals, if that is longer).
--
-- On the jobs table: `attempt_started_at`, when the latest attempt started (the read writes it
-- beside `started_at`, the first attempt's start), so a job's duration is its last attempt's
-- time, not its retries' backoff; and `webhook_failures`/`webhook_failed_at`, the job webhook
-- deliveries that failed (given up after their tries, or refused), which the worker adds at its
-- next heartbeat. `pgmq_worker.stuck_jobs()` counts, per queue, running jobs whose lease passed
-- without a renewal (their message is visible again, or gone): its owner's rights read the queue
-- tables, which a `web` role may not.
--
-- Grants: `pgmq_worker.grant_access` records each role in pgmq_worker.access; a trigger there
-- gives a `worker` role the registry's rows to write and a `web` role the rows to read (both may
-- call stuck_jobs), for the roles granted before this migration too.
CREATE TABLE pgmq_worker.workers (
    id text PRIMARY KEY,  -- host:pid:random, one per worker process
    host text NOT NULL,
    pid integer NOT NULL,
    machine_id text,  -- FLY_MACHINE_ID, where the worker runs on a Fly machine
    region text,  -- FLY_REGION
    version text NOT NULL,  -- pgmq-worker's
    queues text[] NOT NULL,
    concurrency integer NOT NULL,
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'draining')),
    in_flight integer NOT NULL DEFAULT 0,
    processed bigint NOT NULL DEFAULT 0,  -- attempts settled since start: succeeded, failed or dead
    failed bigint NOT NULL DEFAULT 0,  -- of those, failed (a retry scheduled) or dead-lettered
    heartbeat interval NOT NULL,  -- how often this worker writes its row
    started_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgmq_worker.workers ENABLE ROW LEVEL SECURITY;
COMMENT ON TABLE pgmq_worker.workers IS 'pgmq-worker: running workers, kept current by their heartbeats';

ALTER TABLE pgmq_worker.jobs
    ADD COLUMN attempt_started_at timestamptz,
    ADD COLUMN webhook_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN webhook_failed_at timestamptz;

CREATE FUNCTION pgmq_worker.stuck_jobs(only_queue text DEFAULT NULL)
RETURNS TABLE (queue_name text, stuck bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text;
    n bigint;
BEGIN
    FOR q IN
        SELECT DISTINCT j.queue FROM pgmq_worker.jobs AS j
        WHERE j.status = 'running' AND (only_queue IS NULL OR j.queue = only_queue)
    LOOP
        IF to_regclass('pgmq.' || quote_ident('q_' || q)) IS NULL THEN  -- the queue is gone
            SELECT count(*) INTO n FROM pgmq_worker.jobs AS j WHERE j.queue = q AND j.status = 'running';
        ELSE
            -- A lease is renewed well before it ends: a running job's message that is visible
            -- again (or was deleted under it) has no worker holding it.
            EXECUTE format(
                'SELECT count(*) FROM pgmq_worker.jobs AS j LEFT JOIN pgmq.%I AS m ON m.msg_id = j.msg_id'
                ' WHERE j.queue = $1 AND j.status = ''running'''
                ' AND (m.msg_id IS NULL OR m.vt <= clock_timestamp())', 'q_' || q)
            INTO n USING q;
        END IF;
        IF n > 0 THEN
            queue_name := q;
            stuck := n;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgmq_worker.stuck_jobs(text) IS
    'Running jobs, per queue, whose lease passed without a renewal (pgmq-worker stats)';
REVOKE ALL ON FUNCTION pgmq_worker.stuck_jobs(text) FROM PUBLIC;

-- The registry's grants for one role of pgmq_worker.access (its kind may have changed).
CREATE FUNCTION pgmq_worker.grant_registry() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = NEW.role) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('REVOKE ALL ON pgmq_worker.workers FROM %I', NEW.role);
    EXECUTE format('REVOKE ALL ON FUNCTION pgmq_worker.stuck_jobs(text) FROM %I', NEW.role);
    IF NEW.kind = 'worker' THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.workers TO %I', NEW.role);
        PERFORM pgmq_worker._policy('workers', NEW.role, 'ALL');
    ELSIF NEW.kind = 'web' THEN
        EXECUTE format('GRANT SELECT ON pgmq_worker.workers TO %I', NEW.role);
        PERFORM pgmq_worker._policy('workers', NEW.role, 'SELECT');
    END IF;
    IF NEW.kind IN ('worker', 'web') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pgmq_worker.stuck_jobs(text) TO %I', NEW.role);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pgmq_worker.grant_registry() FROM PUBLIC;

CREATE TRIGGER access_grant_registry AFTER INSERT OR UPDATE ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_registry();

-- The roles granted before this migration: the same grants, by touching their rows.
UPDATE pgmq_worker.access SET kind = kind;
