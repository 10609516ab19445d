-- The dashboard's job list (web/dashboard, queues/job_list.py): newest first, keyset-paginated on
-- (created_at, id), filtered by queue, status, owner, time and text in the error. One index per
-- filter that can be selective, each ending in the sort key so a page is an index range scan that
-- stops after one page of rows; an owner's jobs already have jobs_owner_created_idx (0003).
--
-- Every index costs each job-row write an entry (the read's and the settle's status changes are
-- not HOT updates: 0015), so there are as few as the pages need: bench/dashboard_pages.py measures
-- the pages at 1,000,000 rows and the enqueue cost with and without these. The errored-jobs index
-- is partial: only rows that hold an error pay for it. On a large existing table, build them by
-- hand first with CREATE INDEX CONCURRENTLY under these names (the IF NOT EXISTS then skips them).
CREATE INDEX IF NOT EXISTS jobs_created_idx ON pgmq_worker.jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_queue_created_idx ON pgmq_worker.jobs (queue, created_at, id);
-- `succeeded` is most rows: its filter reads jobs_created_idx densely; the index holds the others
-- (queued, running, failed: few at a time; dead, cancelled), and a job's last write skips it.
CREATE INDEX IF NOT EXISTS jobs_status_created_idx ON pgmq_worker.jobs (status, created_at, id)
    WHERE status <> 'succeeded';
CREATE INDEX IF NOT EXISTS jobs_errored_created_idx ON pgmq_worker.jobs (created_at, id)
    WHERE error IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_errored_queue_created_idx ON pgmq_worker.jobs (queue, created_at, id)
    WHERE error IS NOT NULL;
-- The queues page's last hour reads finished rows by time: jobs_finished_idx (0020, retention's).
-- The planner takes status and `error IS NOT NULL` for independent (they are not: dead jobs all
-- hold an error); without this it reads every dead row to sort them instead of the newest few.
CREATE STATISTICS IF NOT EXISTS pgmq_worker.jobs_errored_stats (mcv, dependencies)
    ON status, (error IS NOT NULL) FROM pgmq_worker.jobs;
-- Text in the error ("Error contains"): a trigram index over the text the filter searches, for
-- the rows that hold an error, so a rare or absent word is an index lookup instead of a read of
-- every failed row (pg_trgm ships with PostgreSQL and Supabase). Where the extension cannot be
-- installed, the filter still works by reading the errored rows in order, only slower.
DO $$
DECLARE
    ext_schema name;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm') THEN
        IF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
            RAISE NOTICE 'pgmq_worker 0021: pg_trgm is not available; the error filter reads errored rows';
            RETURN;
        END IF;
        BEGIN
            CREATE EXTENSION pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgmq_worker 0021: may not create pg_trgm; the error filter reads errored rows';
            RETURN;
        END;
    END IF;
    SELECT n.nspname INTO ext_schema FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm';
    -- queues/job_list.py's WHERE["error"] spells the same expression: keep the two identical.
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS jobs_error_text_idx ON pgmq_worker.jobs USING gin'
        ' ((coalesce(error->>''type'', '''') || '': '' || coalesce(error->>''message'', '''')) %I.gin_trgm_ops)'
        ' WHERE error IS NOT NULL', ext_schema);
END
$$;
