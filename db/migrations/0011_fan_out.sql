-- Fan-out / fan-in: a parent job spawns N child jobs (`await ctx.fan_out(...)`) and completes
-- when every child has finished, one way or the other.
--
-- The parent's message stays in its queue, hidden until the fan-out's deadline; the transaction
-- that settles a child's last job row change counts it, sends the next held-back child (the cap
-- on children running at once), raises the parent's progress and, when the last child is done,
-- makes the parent's message visible now. Everything happens in the child's own settle, so a
-- crashed worker never leaves a parent waiting: its children reappear and settle, and a parent
-- whose children never finish wakes at its deadline and closes the fan-out itself.

-- Per-job policy set by the spawner: a child's own timeout and attempts, overriding its handler's.
ALTER TABLE pgmq_worker.jobs
    ADD COLUMN parent_id uuid,
    ADD COLUMN fan_out text,  -- the parent's fan-out (step) name
    ADD COLUMN child_index integer,
    ADD COLUMN timeout_s double precision CHECK (timeout_s IS NULL OR timeout_s > 0),
    ADD COLUMN max_attempts integer CHECK (max_attempts IS NULL OR max_attempts >= 1);
CREATE INDEX jobs_parent_idx ON pgmq_worker.jobs (parent_id, fan_out, child_index)
    WHERE parent_id IS NOT NULL;

CREATE TABLE pgmq_worker.fan_outs (
    parent_id uuid NOT NULL REFERENCES pgmq_worker.jobs (id) ON DELETE CASCADE,
    name text NOT NULL,
    parent_queue text NOT NULL,
    parent_msg_id bigint NOT NULL,
    child_queue text NOT NULL,
    total integer NOT NULL CHECK (total >= 1),
    max_running integer NOT NULL CHECK (max_running >= 1),
    child_timeout_s double precision,
    child_max_attempts integer,
    owner uuid,
    succeeded integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,  -- dead or cancelled
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    progress_from smallint NOT NULL DEFAULT 0,  -- the parent's progress as children finish:
    progress_to smallint NOT NULL DEFAULT 100,  -- from .. to, in proportion
    deadline timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz,
    PRIMARY KEY (parent_id, name)
);
-- Children not sent yet (beyond max_running): sent one by one as running ones finish.
CREATE TABLE pgmq_worker.fan_out_pending (
    parent_id uuid NOT NULL,
    name text NOT NULL,
    child_index integer NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (parent_id, name, child_index),
    FOREIGN KEY (parent_id, name) REFERENCES pgmq_worker.fan_outs (parent_id, name) ON DELETE CASCADE
);
ALTER TABLE pgmq_worker.fan_outs ENABLE ROW LEVEL SECURITY;  -- no policy: only the worker's role
ALTER TABLE pgmq_worker.fan_out_pending ENABLE ROW LEVEL SECURITY;
COMMENT ON TABLE pgmq_worker.fan_outs IS 'pgmq-worker: fan-outs of parent jobs and their counts';

-- Send up to `n` held-back children of a fan-out, lowest index first: each a pgmq message and
-- its job row (linked to the parent, with the fan-out's child policy). Returns how many it sent.
CREATE FUNCTION pgmq_worker.fan_out_send(p_parent uuid, p_name text, n integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    f pgmq_worker.fan_outs%ROWTYPE;
    child record;
    sent bigint;
    n_sent integer := 0;
BEGIN
    SELECT * INTO f FROM pgmq_worker.fan_outs WHERE parent_id = p_parent AND name = p_name;
    IF NOT FOUND OR f.status <> 'open' THEN
        RETURN 0;
    END IF;
    FOR child IN
        DELETE FROM pgmq_worker.fan_out_pending AS p
        WHERE (p.parent_id, p.name, p.child_index) IN (
            SELECT q.parent_id, q.name, q.child_index FROM pgmq_worker.fan_out_pending AS q
            WHERE q.parent_id = p_parent AND q.name = p_name
            ORDER BY q.child_index LIMIT n FOR UPDATE SKIP LOCKED)
        RETURNING p.child_index, p.body
    LOOP
        SELECT s INTO sent FROM pgmq.send(f.child_queue, child.body, 0) AS s;
        INSERT INTO pgmq_worker.jobs
            (queue, msg_id, status, owner, parent_id, fan_out, child_index, timeout_s, max_attempts)
        VALUES (f.child_queue, sent, 'queued', f.owner, p_parent, p_name, child.child_index,
                f.child_timeout_s, f.child_max_attempts);
        n_sent := n_sent + 1;
    END LOOP;
    RETURN n_sent;
END
$$;

-- A child reached its end (succeeded, dead, cancelled): count it, send the next held-back one,
-- raise the parent's progress, and wake the parent when it was the last.
CREATE FUNCTION pgmq_worker.fan_out_child_done() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    f pgmq_worker.fan_outs%ROWTYPE;
    finished integer;
BEGIN
    UPDATE pgmq_worker.fan_outs
    SET succeeded = succeeded + CASE WHEN NEW.status = 'succeeded' THEN 1 ELSE 0 END,
        failed = failed + CASE WHEN NEW.status = 'succeeded' THEN 0 ELSE 1 END
    WHERE parent_id = NEW.parent_id AND name = NEW.fan_out AND status = 'open'
    RETURNING * INTO f;
    IF NOT FOUND THEN
        RETURN NULL;  -- closed at its deadline, or not a fan-out child any more
    END IF;
    PERFORM pgmq_worker.fan_out_send(f.parent_id, f.name, 1);
    finished := f.succeeded + f.failed;
    UPDATE pgmq_worker.jobs
    SET progress = greatest(progress, f.progress_from + (f.progress_to - f.progress_from) * finished / f.total),
        step = f.name,
        detail = jsonb_build_object(
            'children', f.total, 'finished', finished, 'succeeded', f.succeeded, 'failed', f.failed),
        updated_at = now()
    WHERE id = f.parent_id AND status NOT IN ('succeeded', 'dead', 'cancelled');
    IF finished >= f.total THEN
        -- The queue table directly, as the worker's settles do: pgmq.set_vt's overloads differ
        -- between versions (1.13's integer one calls a timestamp one that 1.5 lacks).
        EXECUTE format('UPDATE pgmq.%I SET vt = clock_timestamp() WHERE msg_id = $1', 'q_' || f.parent_queue)
            USING f.parent_msg_id;
        -- Wake idle workers on the parent's queue as a new message would (migration 0002).
        PERFORM pg_notify('pgmq.q_' || f.parent_queue || '.INSERT', NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_fan_out_child_done AFTER UPDATE OF status ON pgmq_worker.jobs
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL
          AND NEW.status IN ('succeeded', 'dead', 'cancelled')
          AND OLD.status NOT IN ('succeeded', 'dead', 'cancelled'))
    EXECUTE FUNCTION pgmq_worker.fan_out_child_done();
