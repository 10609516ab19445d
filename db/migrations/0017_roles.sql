-- Least privilege: what a worker, a web process and a plain sender may do, granted by name.
--
--   SELECT pgmq_worker.grant_access('app_worker', 'worker');   -- read, run, settle, fan out
--   SELECT pgmq_worker.grant_access('app_web', 'web');         -- enqueue, read job status
--   SELECT pgmq_worker.grant_access('app_sender', 'sender');   -- pgmq.send, nothing else
--
-- Run them as the role that migrated (it owns pgmq_worker's tables; on Supabase `postgres`),
-- after creating the login roles. The grants and the row-level security policies the roles
-- need are made here, and `pgmq_worker.access` remembers them, so queues created later get
-- theirs too: pgmq puts every queue in its own tables (pgmq.q_<name>, pgmq.a_<name>), and a
-- trigger on pgmq.meta grants on each new queue's tables at the commit that creates it (where
-- we may add that trigger; otherwise run `SELECT pgmq_worker.grant_queue('<name>')`).
-- tests/test_privileges.py runs each role through its job and through what it must not do;
-- the README's "Roles and grants" table lists the same statements.
CREATE TABLE pgmq_worker.access (
    role name PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('worker', 'web', 'sender')),
    granted_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgmq_worker.access ENABLE ROW LEVEL SECURITY;  -- no policy: only the owner
COMMENT ON TABLE pgmq_worker.access IS 'pgmq-worker: roles granted access with pgmq_worker.grant_access';

-- One queue's tables, for every role granted access. Dead-letter queues (<name>_dlq) are the
-- worker's alone: it sends dead letters there; `pgmq-worker dlq` runs as the owner.
CREATE FUNCTION pgmq_worker.grant_queue(queue_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text := 'pgmq.' || quote_ident('q_' || queue_name);
    a text := 'pgmq.' || quote_ident('a_' || queue_name);
    seq text;
    r record;
BEGIN
    IF to_regclass(q) IS NULL THEN
        RETURN;
    END IF;
    seq := pg_get_serial_sequence(q, 'msg_id');
    FOR r IN SELECT g.role, g.kind FROM pgmq_worker.access AS g JOIN pg_roles ON rolname = g.role LOOP
        IF r.kind = 'worker' THEN
            -- TRIGGER: the worker adds its insert-notification trigger (README: Wake-up).
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON %s TO %I', q, r.role);
            IF to_regclass(a) IS NOT NULL THEN
                EXECUTE format('GRANT SELECT, INSERT ON %s TO %I', a, r.role);
            END IF;
            IF seq IS NOT NULL THEN  -- moved past old job ids after a queue is made again
                EXECUTE format('GRANT SELECT, USAGE, UPDATE ON SEQUENCE %s TO %I', seq, r.role);
            END IF;
        ELSIF queue_name NOT LIKE '%\_dlq' THEN
            -- pgmq.send and our enqueue insert and return the new msg_id (RETURNING needs
            -- SELECT on that column): no other column is readable.
            EXECUTE format('GRANT INSERT, SELECT (msg_id) ON %s TO %I', q, r.role);
            IF r.kind = 'web' AND seq IS NOT NULL THEN  -- reads the sequence at start (see above)
                EXECUTE format('GRANT SELECT ON SEQUENCE %s TO %I', seq, r.role);
            END IF;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION pgmq_worker.grant_access(role_name name, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
    queue record;
BEGIN
    IF kind NOT IN ('worker', 'web', 'sender') THEN
        RAISE EXCEPTION 'pgmq_worker.grant_access: kind must be worker, web or sender, not %', kind;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'pgmq_worker.grant_access: role % does not exist', role_name;
    END IF;
    INSERT INTO pgmq_worker.access (role, kind) VALUES (role_name, kind)
    ON CONFLICT (role) DO UPDATE SET kind = EXCLUDED.kind, granted_at = now();
    EXECUTE format('GRANT USAGE ON SCHEMA pgmq TO %I', role_name);
    IF kind IN ('worker', 'web') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA pgmq_worker TO %I', role_name);
        -- Start-up checks: pgmq's version and queues, and that no migration is pending.
        EXECUTE format('GRANT SELECT ON pgmq.meta, pgmq_worker.schema_migrations TO %I', role_name);
        IF to_regclass('pgmq_worker.pgmq_sql_install') IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON pgmq_worker.pgmq_sql_install TO %I', role_name);
        END IF;
    END IF;
    IF kind = 'worker' THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON pgmq_worker.jobs TO %I', role_name);
        EXECUTE format(
            'GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.job_steps, pgmq_worker.job_artifacts,'
            ' pgmq_worker.limits, pgmq_worker.limit_holds, pgmq_worker.fan_outs,'
            ' pgmq_worker.fan_out_pending, pgmq_worker.waiters TO %I', role_name);
        -- The jobs table's change trigger looks up who streams a job (migration 0006).
        EXECUTE format('GRANT SELECT ON pgmq_worker.job_watchers TO %I', role_name);
        FOREACH t IN ARRAY ARRAY['jobs', 'job_steps', 'job_artifacts', 'limits', 'limit_holds',
                                 'fan_outs', 'fan_out_pending'] LOOP
            PERFORM pgmq_worker._policy(t, role_name, 'ALL');
        END LOOP;
    ELSIF kind = 'web' THEN
        EXECUTE format('GRANT SELECT, INSERT ON pgmq_worker.jobs TO %I', role_name);
        EXECUTE format('GRANT SELECT ON pgmq_worker.job_steps, pgmq_worker.job_artifacts TO %I', role_name);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pgmq_worker.job_watchers TO %I', role_name);
        -- The web process checks each caller's ownership itself (web/auth.py), so it reads all rows.
        PERFORM pgmq_worker._policy('jobs', role_name, 'SELECT');
        PERFORM pgmq_worker._policy('jobs', role_name, 'INSERT');
        PERFORM pgmq_worker._policy('job_steps', role_name, 'SELECT');
        PERFORM pgmq_worker._policy('job_artifacts', role_name, 'SELECT');
    END IF;
    FOR queue IN SELECT queue_name FROM pgmq.meta LOOP
        PERFORM pgmq_worker.grant_queue(queue.queue_name);
    END LOOP;
END
$$;

-- A row-level security policy letting `role_name` do `command` on every row of one table.
CREATE FUNCTION pgmq_worker._policy(tbl text, role_name name, command text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    policy text := left(lower(command) || ' by ' || role_name, 63);
BEGIN
    EXECUTE format('DROP POLICY IF EXISTS %I ON pgmq_worker.%I', policy, tbl);
    EXECUTE format(
        'CREATE POLICY %I ON pgmq_worker.%I FOR %s TO %I %s', policy, tbl, command, role_name,
        CASE command WHEN 'INSERT' THEN 'WITH CHECK (true)' WHEN 'ALL' THEN 'USING (true) WITH CHECK (true)'
        ELSE 'USING (true)' END);
END
$$;

-- A new queue's tables get the grants of every role in pgmq_worker.access, at the commit that
-- created it (pgmq.create fills pgmq.meta last, but a deferred trigger does not depend on that).
CREATE FUNCTION pgmq_worker.grant_new_queue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM pgmq_worker.grant_queue(NEW.queue_name);
    EXCEPTION WHEN insufficient_privilege THEN
        -- Created by a role that may not read pgmq_worker.access: never fail the queue for it.
        RAISE WARNING 'pgmq_worker: no grants on new queue %: %; run SELECT pgmq_worker.grant_queue(%L)',
            NEW.queue_name, SQLERRM, NEW.queue_name;
    END;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    -- Only the owner of pgmq.meta may add the trigger (on Supabase the extension's tables may
    -- belong to another role): without it, grant_queue is run by hand for new queues.
    IF pg_has_role((SELECT relowner FROM pg_class WHERE oid = 'pgmq.meta'::regclass), 'USAGE') THEN
        CREATE CONSTRAINT TRIGGER pgmq_worker_grant_new_queue AFTER INSERT ON pgmq.meta
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgmq_worker.grant_new_queue();
    END IF;
END
$$;

REVOKE ALL ON FUNCTION pgmq_worker.grant_queue(text), pgmq_worker.grant_access(name, text),
    pgmq_worker._policy(text, name, text) FROM PUBLIC;
