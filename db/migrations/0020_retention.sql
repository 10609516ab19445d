-- Retry, replay and retention.
--
-- Retry: a `dead` job is sent again as a new delivery of the SAME job id (a user's link to it
-- stays valid): its dead letter's payload goes back to the queue, the row moves to the new
-- message with attempts, deferrals and error reset, and what the earlier run came to is kept in
-- `history` (one object per earlier run). Dead letters without a job row (job_rows=False
-- queues, or sent by plain pgmq.send) go back as plain messages. Everything in one transaction.
--
-- Retention: finished rows (succeeded, dead, cancelled) and archived messages older than an age
-- are deleted in small batches, each its own statement, so nothing holds locks for long.
--
-- The functions are SECURITY DEFINER: the web process (retry from the API or the dashboard)
-- and the worker (its pruner) may not touch the dead-letter queues or delete rows themselves.
-- EXECUTE goes to the roles of pgmq_worker.grant_access (migration 0017) by kind, through a
-- trigger on pgmq_worker.access, so 0017's functions stay as they are.
ALTER TABLE pgmq_worker.jobs ADD COLUMN history jsonb;
COMMENT ON COLUMN pgmq_worker.jobs.history IS
    'pgmq-worker: earlier runs of a retried job: [{msg_id, attempts, deferrals, error, started_at, finished_at, retried_at}]';

-- The pruner's walk: per queue, oldest finished first (only finished rows are in it).
CREATE INDEX jobs_finished_idx ON pgmq_worker.jobs (queue, finished_at) WHERE finished_at IS NOT NULL;

-- Who prunes: one worker at a time holds this lease row, renewing it while it keeps pruning.
-- A row, not an advisory lock: session locks do not survive a transaction-mode pooler.
CREATE TABLE pgmq_worker.retention_lease (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    holder text NOT NULL,
    until timestamptz NOT NULL,
    last_pruned_at timestamptz
);
ALTER TABLE pgmq_worker.retention_lease ENABLE ROW LEVEL SECURITY;  -- no policy: through the functions
COMMENT ON TABLE pgmq_worker.retention_lease IS 'pgmq-worker: which worker prunes finished rows';

-- One dead letter back to its queue: send the payload, move its dead job row (if any) to the
-- new message, delete the dead letter. Returns the job id (NULL: no job row) and the new msg_id.
CREATE FUNCTION pgmq_worker._replay_one(p_queue text, p_dlq_msg_id bigint, p_record jsonb,
                                        OUT job_id uuid, OUT msg_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    body jsonb := CASE WHEN jsonb_typeof(p_record) = 'object' AND p_record ? 'payload'
                       THEN p_record -> 'payload' ELSE p_record END;
    old_msg bigint := CASE WHEN jsonb_typeof(p_record -> 'msg_id') = 'number'
                                AND p_record ->> 'msg_id' ~ '^[0-9]{1,18}$'
                           THEN (p_record ->> 'msg_id')::bigint END;
    j pgmq_worker.jobs%ROWTYPE;
BEGIN
    SELECT s INTO msg_id FROM pgmq.send(p_queue, body, 0::integer) AS s;
    IF old_msg IS NOT NULL THEN
        UPDATE pgmq_worker.jobs AS r
        SET msg_id = _replay_one.msg_id, status = 'queued', attempts = 0, deferrals = 0,
            error = NULL, result = NULL, progress = 0, step = NULL, detail = NULL,
            started_at = NULL, finished_at = NULL, updated_at = now(),
            -- Migrations 0018, 0019: the new run has no attempt yet, nor a cancel asked of it.
            attempt_started_at = NULL, cancel_requested_at = NULL,
            history = coalesce(r.history, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
                'msg_id', r.msg_id, 'attempts', r.attempts, 'deferrals', r.deferrals,
                'error', r.error, 'started_at', r.started_at, 'finished_at', r.finished_at,
                'retried_at', now()))
        WHERE r.queue = p_queue AND r.msg_id = old_msg AND r.status = 'dead'
        RETURNING r.* INTO j;
        job_id := j.id;
        -- A child of a fan-out still open was counted as failed: it counts again when it ends.
        IF j.parent_id IS NOT NULL THEN
            UPDATE pgmq_worker.fan_outs SET failed = failed - 1
            WHERE parent_id = j.parent_id AND name = j.fan_out AND status = 'open' AND failed > 0;
        END IF;
    END IF;
    EXECUTE format('DELETE FROM pgmq.%I WHERE msg_id = $1', 'q_' || p_queue || '_dlq') USING p_dlq_msg_id;
END
$$;

-- Retry one job: `retried` (with the new msg_id), `unknown`, `not_dead` (with its status),
-- `no_dead_letter` (purged: its payload is gone) or `conflict` (an unfinished job holds its
-- idempotency key now).
CREATE FUNCTION pgmq_worker.retry_job(p_job uuid)
RETURNS TABLE (outcome text, status text, msg_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j pgmq_worker.jobs%ROWTYPE;
    d_id bigint;
    d_message jsonb;
    replayed record;
BEGIN
    SELECT * INTO j FROM pgmq_worker.jobs WHERE id = p_job FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    IF j.status <> 'dead' THEN
        RETURN QUERY SELECT 'not_dead'::text, j.status, j.msg_id;
        RETURN;
    END IF;
    IF to_regclass(format('pgmq.%I', 'q_' || j.queue || '_dlq')) IS NOT NULL THEN
        EXECUTE format(
            'SELECT msg_id, message FROM pgmq.%I WHERE message ->> ''msg_id'' = $1'
            ' AND coalesce(message ->> ''queue'', $2) = $2 AND vt <= clock_timestamp()'
            ' ORDER BY msg_id DESC LIMIT 1 FOR UPDATE', 'q_' || j.queue || '_dlq')
        INTO d_id, d_message USING j.msg_id::text, j.queue;
    END IF;
    IF d_id IS NULL THEN
        RETURN QUERY SELECT 'no_dead_letter'::text, j.status, j.msg_id;
        RETURN;
    END IF;
    BEGIN
        SELECT * INTO replayed FROM pgmq_worker._replay_one(j.queue, d_id, d_message);
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT 'conflict'::text, j.status, j.msg_id;
        RETURN;
    END;
    RETURN QUERY SELECT 'retried'::text, 'queued'::text, replayed.msg_id;
END
$$;

-- Replay dead letters of a queue: those named (NULL: all), of one error type (NULL: any). Each
-- is retried as above; one whose job's idempotency key is taken stays in the dead-letter queue.
CREATE FUNCTION pgmq_worker.replay_dead_letters(p_queue text, p_ids bigint[], p_error_type text)
RETURNS TABLE (dlq_msg_id bigint, job_id uuid, msg_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    replayed record;
BEGIN
    FOR d IN EXECUTE format(
        'SELECT msg_id, message FROM pgmq.%I WHERE vt <= clock_timestamp()'
        ' AND ($1 IS NULL OR msg_id = ANY($1)) AND ($2 IS NULL OR message -> ''error'' ->> ''type'' = $2)'
        ' ORDER BY msg_id FOR UPDATE SKIP LOCKED', 'q_' || p_queue || '_dlq') USING p_ids, p_error_type
    LOOP
        BEGIN
            SELECT * INTO replayed FROM pgmq_worker._replay_one(p_queue, d.msg_id, d.message);
            dlq_msg_id := d.msg_id;
            job_id := replayed.job_id;
            msg_id := replayed.msg_id;
            RETURN NEXT;
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- rolled back to before this entry: it stays parked
        END;
    END LOOP;
END
$$;

-- Delete dead letters parked longer than p_older_than (NULL: all). Returns how many.
CREATE FUNCTION pgmq_worker.purge_dead_letters(p_queue text, p_older_than interval)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('DELETE FROM pgmq.%I WHERE $1 IS NULL OR enqueued_at < now() - $1',
                   'q_' || p_queue || '_dlq') USING p_older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- One batch of finished job rows of a queue, finished before p_before (their steps and
-- artifacts go by ON DELETE CASCADE, a fan-out parent's counts too). Returns how many.
-- `= ANY(ARRAY(...))`, not `IN (SELECT ...)`: the planner turned the IN into a hash join over a
-- sequential scan of the whole table (auto_explain, 20,000 rows; tests/test_retention.py). ORDER
-- BY finished_at: the function's generic plan does not know how old the cutoff is and guessed a
-- third of the table (a sequential scan again, on pgmq 1.4.4's run); walking the index in order
-- and stopping at the batch's LIMIT is cheap whatever the cutoff.
CREATE FUNCTION pgmq_worker.prune_jobs(p_queue text, p_before timestamptz, p_batch integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH gone AS (
        DELETE FROM pgmq_worker.jobs WHERE id = ANY (ARRAY(
            SELECT id FROM pgmq_worker.jobs
            WHERE queue = p_queue AND finished_at IS NOT NULL AND finished_at < p_before
                AND status IN ('succeeded', 'dead', 'cancelled')
            ORDER BY finished_at LIMIT p_batch FOR UPDATE SKIP LOCKED))
        RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;

-- One batch of a queue's archived messages (pgmq.a_<queue>, indexed on archived_at in every
-- pgmq version), archived before p_before. Returns how many.
CREATE FUNCTION pgmq_worker.prune_archive(p_queue text, p_before timestamptz, p_batch integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a text := 'a_' || p_queue;
    n integer;
BEGIN
    IF to_regclass(format('pgmq.%I', a)) IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM pgmq.%1$I WHERE msg_id = ANY (ARRAY(SELECT msg_id FROM pgmq.%1$I'
                   ' WHERE archived_at < $1 ORDER BY archived_at LIMIT $2 FOR UPDATE SKIP LOCKED))', a) USING p_before, p_batch;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The queues that have finished job rows: a loose scan of jobs_finished_idx (one probe a queue).
CREATE FUNCTION pgmq_worker.finished_queues()
RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE q(queue) AS (
        SELECT min(queue) FROM pgmq_worker.jobs WHERE finished_at IS NOT NULL
        UNION ALL
        SELECT (SELECT min(j.queue) FROM pgmq_worker.jobs AS j
                WHERE j.finished_at IS NOT NULL AND j.queue > q.queue)
        FROM q WHERE q.queue IS NOT NULL)
    SELECT queue FROM q WHERE queue IS NOT NULL
$$;

-- Take (or keep) the pruner's lease for p_ttl; true when p_holder holds it now.
CREATE FUNCTION pgmq_worker.claim_retention(p_holder text, p_ttl interval)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH claimed AS (
        INSERT INTO pgmq_worker.retention_lease AS l (holder, until) VALUES (p_holder, now() + p_ttl)
        ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
        WHERE l.until < now() OR l.holder = EXCLUDED.holder
        RETURNING 1)
    SELECT EXISTS (SELECT FROM claimed)
$$;

-- A pruning pass finished: stamp it (what `pgmq-worker prune` and the dashboard may show).
CREATE FUNCTION pgmq_worker.retention_pruned(p_holder text)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE pgmq_worker.retention_lease SET last_pruned_at = now() WHERE holder = p_holder
$$;

-- A worker that stops gives the lease up, so another takes over at its next try.
CREATE FUNCTION pgmq_worker.release_retention(p_holder text)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE pgmq_worker.retention_lease SET until = now() WHERE holder = p_holder
$$;

REVOKE ALL ON FUNCTION pgmq_worker._replay_one(text, bigint, jsonb), pgmq_worker.retry_job(uuid),
    pgmq_worker.replay_dead_letters(text, bigint[], text), pgmq_worker.purge_dead_letters(text, interval),
    pgmq_worker.prune_jobs(text, timestamptz, integer), pgmq_worker.prune_archive(text, timestamptz, integer),
    pgmq_worker.finished_queues(), pgmq_worker.claim_retention(text, interval),
    pgmq_worker.retention_pruned(text), pgmq_worker.release_retention(text) FROM PUBLIC;

-- The web process retries and replays (API, dashboard); the worker also prunes.
CREATE FUNCTION pgmq_worker.grant_retention() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = NEW.role) THEN
        RETURN NULL;
    END IF;
    IF NEW.kind IN ('worker', 'web') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pgmq_worker.retry_job(uuid),'
                       ' pgmq_worker.replay_dead_letters(text, bigint[], text),'
                       ' pgmq_worker.purge_dead_letters(text, interval) TO %I', NEW.role);
    END IF;
    IF NEW.kind = 'worker' THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pgmq_worker.prune_jobs(text, timestamptz, integer),'
                       ' pgmq_worker.prune_archive(text, timestamptz, integer), pgmq_worker.finished_queues(),'
                       ' pgmq_worker.claim_retention(text, interval), pgmq_worker.retention_pruned(text),'
                       ' pgmq_worker.release_retention(text) TO %I', NEW.role);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER access_grant_retention AFTER INSERT OR UPDATE ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_retention();
UPDATE pgmq_worker.access SET kind = kind;  -- roles granted before this migration
