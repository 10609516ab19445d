-- pgmq-worker on Supabase: what a project needs beyond `pgmq-worker migrate`.
--
-- Paste this into the SQL editor (Dashboard -> SQL Editor -> New query -> Run) AFTER the first
-- `pgmq-worker migrate` (on Fly it is the release command, so after the first `fly deploy`).
-- It runs as `postgres` and can be run again: every statement is idempotent.
--
-- 1. supabase-js reads of job rows: `supabase.schema("pgmq_worker").from("jobs")`.
--    Also add the schema to the API: Dashboard -> Project Settings -> Data API -> "Exposed
--    schemas" -> add `pgmq_worker` -> Save. Row-level security (migration 0004) lets a signed-in
--    user read only the jobs whose `owner` is their `auth.uid()`, and write none; `anon` reads
--    nothing. The service role (BYPASSRLS) reads every row, for your own server code.
-- 2. Three roles with only the grants they need (docs/how-to/roles-and-grants.md): the worker, the
--    web process, and a sender that may only `pgmq.send`. They are made NOLOGIN here, so pasting
--    this file never leaves a login with a known password: give each a password yourself,
--        ALTER ROLE pgmq_worker_run LOGIN PASSWORD '<a long random password>';
--    and connect as it (through Supavisor the user name is `pgmq_worker_run.<project-ref>`).
--    Skip this part, and keep connecting as `postgres`, if you prefer.
--
-- Queues: create them as `postgres` (the Queues page of the dashboard, `pgmq-worker run` or
-- `send` connected as `postgres` once, or `select pgmq.create('name'); select
-- pgmq.create('name_dlq');`). Where the migration could add its trigger on pgmq.meta, a new queue
-- gets the roles' grants as it is created; otherwise run the grant_queue line at the end for it.

DO $$
BEGIN
    IF to_regprocedure('pgmq_worker.grant_access(name, text)') IS NULL THEN
        RAISE EXCEPTION 'pgmq-worker''s migrations are missing or older than 0017: run `pgmq-worker migrate` first';
    END IF;
END
$$;

-- 1. Expose pgmq_worker to the Data API roles (the table grants and policies are the migrations').
GRANT USAGE ON SCHEMA pgmq_worker TO anon, authenticated, service_role;
GRANT SELECT ON pgmq_worker.jobs TO authenticated;
GRANT SELECT ON pgmq_worker.jobs, pgmq_worker.job_steps, pgmq_worker.job_artifacts TO service_role;
NOTIFY pgrst, 'reload schema';  -- PostgREST picks the grants up now rather than at its next reload

-- 2. The roles (rename them here if you like: every name below is used once more, in grant_access).
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['pgmq_worker_run', 'pgmq_worker_web', 'pgmq_worker_send'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
END
$$;
SELECT pgmq_worker.grant_access('pgmq_worker_run', 'worker');
SELECT pgmq_worker.grant_access('pgmq_worker_web', 'web');
SELECT pgmq_worker.grant_access('pgmq_worker_send', 'sender');

-- Queues created by other means, where the trigger could not be added (see above): once per queue.
-- SELECT pgmq_worker.grant_queue('my_queue'); SELECT pgmq_worker.grant_queue('my_queue_dlq');
