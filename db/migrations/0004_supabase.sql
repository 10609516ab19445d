-- Supabase: stream job rows to the browser, and let users read only their own jobs.
--
-- Row-level security is on everywhere. The table's owner (the role that migrated, `postgres` on
-- Supabase) and roles with BYPASSRLS (`service_role`) are not subject to it: run the worker and
-- the web process as one of those. Where Supabase's `auth.uid()` and `authenticated` role exist,
-- an authenticated user may read the jobs they own and write none; `anon` gets nothing.
ALTER TABLE pgmq_worker.jobs ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
        -- postgres_changes subscriptions (supabase-js) receive every change of a job row.
        ALTER PUBLICATION supabase_realtime ADD TABLE pgmq_worker.jobs;
    END IF;

    IF to_regprocedure('auth.uid()') IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        GRANT USAGE ON SCHEMA pgmq_worker TO authenticated;
        GRANT SELECT ON pgmq_worker.jobs TO authenticated;
        CREATE POLICY jobs_owner_reads ON pgmq_worker.jobs
            FOR SELECT TO authenticated
            USING (owner = (SELECT auth.uid()));
    END IF;
END
$$;
