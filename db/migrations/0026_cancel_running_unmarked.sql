-- Job rows say `running` once a delivery has run a moment (worker/running_marks.py), not at
-- the read: a job in its first moments still says `queued` (or `failed`, a retry) while a worker
-- runs it. cancel_job (0019) took such a job for one not started and ended it at once, deleting
-- the message under the running handler. A running delivery is now also one whose message is
-- held and was read more often than its row has attempts (the settle and the mark write
-- attempts = read_ct; a delay, a retry's backoff or a deferral leaves them equal): it gets the
-- mark and its worker stops it, as a `running` one always did; its row says `running` from
-- then on, as the worker's own mark would have written it. Grants stay (OR REPLACE).
CREATE OR REPLACE FUNCTION pgmq_worker.cancel_job(p_job uuid, OUT outcome text, OUT status text, OUT children uuid[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j record;
    f record;
    q text;
    held boolean;  -- the message exists and is invisible; NULL: it is gone
    ct integer;  -- its read_ct: deliveries so far
    written integer;  -- the job row's attempts: the read_ct of the last attempt written to it
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
        EXECUTE format('SELECT vt > clock_timestamp(), read_ct FROM pgmq.%I WHERE msg_id = $1 FOR UPDATE', q)
            INTO held, ct USING j.msg_id;
    END IF;
    SELECT jobs.status, jobs.attempts INTO status, written FROM pgmq_worker.jobs WHERE id = p_job FOR UPDATE;
    IF status IN ('succeeded', 'dead', 'cancelled') THEN
        outcome := 'finished';
        RETURN;
    END IF;
    IF held AND (status = 'running' OR ct > written) THEN
        -- A worker holds it (or it is a parent waiting for its children): mark it. A delivery
        -- read more often than its row has attempts is one running whose row says so only
        -- later (or never, when it ends first): the read writes nothing to the row.
        UPDATE pgmq_worker.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()),
            status = 'running', attempts = greatest(attempts, ct),
            started_at = coalesce(started_at, now()),
            attempt_started_at = CASE WHEN ct > written THEN now() ELSE attempt_started_at END,
            updated_at = now()
        WHERE id = p_job;
        outcome := 'requested';
        status := 'running';
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
