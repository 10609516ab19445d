-- Cancellation (`POST /jobs/{id}/cancel`, `queues.cancel`, `pgmq-worker cancel`).
--
-- The status `cancelled` was allowed from the start (0003), and every trigger that enumerates
-- statuses already counts it as an end (0011's fan-in; 0003's idempotency index leaves it out).
-- New: when a cancel was asked for. A job that had not started ends `cancelled` at once; a
-- running one keeps `running` with `cancel_requested_at` set until the worker holding it stops
-- it, and any later read of its message (a lost lease, a crash) finds the mark and does not run
-- it. The worker polls the mark for the jobs it holds by primary key, so no index is needed.
ALTER TABLE pgmq_worker.jobs ADD COLUMN cancel_requested_at timestamptz;

-- One job's cancel, in the caller's transaction. SECURITY DEFINER: a `web` role may cancel
-- without being able to read, take or delete messages itself (0017); EXECUTE is granted to the
-- `web` and `worker` roles only (below).
--
-- Locks in the order the worker's own statements take them, so a cancel never deadlocks with a
-- read or a settle: the job's fan-outs (a child's settle and a parent's wait lock that row
-- first), then the message (the read takes it with FOR UPDATE SKIP LOCKED, so a worker skips a
-- message being cancelled and the cancel waits out a read in progress), then the job row. The
-- status is read again under those locks: a read that committed a moment ago made it `running`.
--
-- outcome: `unknown`; `finished` (status says how); `cancelled` (not started: the message is
-- deleted and the job ended, now); `requested` (a worker holds it: marked). `children`: the
-- job's unfinished fan-out children, each to be cancelled after this commits (their settles
-- lock this job's fan-out row after their own rows: taking theirs here could deadlock).
CREATE FUNCTION pgmq_worker.cancel_job(p_job uuid, OUT outcome text, OUT status text, OUT children uuid[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j record;
    f record;
    q text;
    held boolean;  -- the message exists and is invisible; NULL: it is gone
    dropped integer;
BEGIN
    SELECT jobs.queue, jobs.msg_id, jobs.status INTO j FROM pgmq_worker.jobs WHERE id = p_job;
    IF NOT FOUND THEN
        outcome := 'unknown';
        RETURN;
    END IF;
    IF j.status IN ('succeeded', 'dead', 'cancelled') THEN
        outcome := 'finished';
        status := j.status;
        RETURN;
    END IF;
    PERFORM FROM pgmq_worker.fan_outs WHERE parent_id = p_job ORDER BY name FOR UPDATE;
    q := 'q_' || j.queue;
    IF to_regclass(format('pgmq.%I', q)) IS NOT NULL THEN
        EXECUTE format('SELECT vt > clock_timestamp() FROM pgmq.%I WHERE msg_id = $1 FOR UPDATE', q)
            INTO held USING j.msg_id;
    END IF;
    SELECT jobs.status INTO status FROM pgmq_worker.jobs WHERE id = p_job FOR UPDATE;
    IF status IN ('succeeded', 'dead', 'cancelled') THEN
        outcome := 'finished';
        RETURN;
    END IF;
    IF status = 'running' AND held THEN
        -- A worker holds it (or it is a parent waiting for its children): mark it.
        UPDATE pgmq_worker.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
            updated_at = now()
        WHERE id = p_job;
        outcome := 'requested';
    ELSE
        -- Not started (queued, delayed, waiting for a retry), or its lease ran out (a crashed
        -- worker's), or its message is gone: end it now.
        IF held IS NOT NULL THEN
            EXECUTE format('DELETE FROM pgmq.%I WHERE msg_id = $1', q) USING j.msg_id;
        END IF;
        UPDATE pgmq_worker.jobs SET status = 'cancelled',
            cancel_requested_at = coalesce(cancel_requested_at, now()),
            error = jsonb_build_object('type', 'JobCancelled', 'message', 'cancelled on request'),
            finished_at = now(), updated_at = now()
        WHERE id = p_job;
        outcome := 'cancelled';
        status := 'cancelled';
    END IF;
    -- Children not sent yet are never sent: counted as ended (a fan-in reports a child that was
    -- never sent as cancelled), so the last running child's end still wakes the parent, which
    -- then finds its mark. A fan-out with nothing left running wakes its parent now.
    FOR f IN SELECT * FROM pgmq_worker.fan_outs WHERE parent_id = p_job AND fan_outs.status = 'open' LOOP
        DELETE FROM pgmq_worker.fan_out_pending WHERE parent_id = p_job AND name = f.name;
        GET DIAGNOSTICS dropped = ROW_COUNT;
        CONTINUE WHEN dropped = 0;
        UPDATE pgmq_worker.fan_outs SET failed = failed + dropped WHERE parent_id = p_job AND name = f.name;
        IF outcome = 'requested' AND f.succeeded + f.failed + dropped >= f.total THEN
            EXECUTE format('UPDATE pgmq.%I SET vt = clock_timestamp() WHERE msg_id = $1', 'q_' || f.parent_queue)
                USING f.parent_msg_id;
        END IF;
    END LOOP;
    children := ARRAY(
        SELECT c.id FROM pgmq_worker.jobs AS c
        WHERE c.parent_id = p_job AND c.status NOT IN ('succeeded', 'dead', 'cancelled')
        ORDER BY c.fan_out, c.child_index);
END
$$;
REVOKE ALL ON FUNCTION pgmq_worker.cancel_job(uuid) FROM PUBLIC;

-- `web` and `worker` roles (pgmq_worker.grant_access, 0017) may cancel: those granted already,
-- and each one granted later (a trigger on the table grant_access records them in).
CREATE FUNCTION pgmq_worker.grant_cancel() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.kind IN ('web', 'worker') THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pgmq_worker.cancel_job(uuid) TO %I', NEW.role);
    ELSE
        EXECUTE format('REVOKE EXECUTE ON FUNCTION pgmq_worker.cancel_job(uuid) FROM %I', NEW.role);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER access_grant_cancel AFTER INSERT OR UPDATE OF kind ON pgmq_worker.access
    FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_cancel();
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT role FROM pgmq_worker.access AS a
             WHERE a.kind IN ('web', 'worker') AND EXISTS (SELECT FROM pg_roles WHERE rolname = a.role) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION pgmq_worker.cancel_job(uuid) TO %I', r.role);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION pgmq_worker.grant_cancel() FROM PUBLIC;
