-- Job changes for our own listeners (the web process's SSE streams). A web process that streams
-- a job registers it in job_watchers; after each statement that inserts or updates job rows, the
-- ids of the changed rows that someone watches are sent on NOTIFY pgmq_worker_jobs,
-- comma-separated, in chunks under NOTIFY's 8000-byte payload limit. A job nobody watches costs
-- a lookup in a small table and no NOTIFY: NOTIFY serialises the commits that send one, which
-- cost a busy worker a quarter of its throughput when every settle notified.
-- Supabase users can use Realtime instead; both see the same rows.
CREATE UNLOGGED TABLE pgmq_worker.job_watchers (
    job_id uuid NOT NULL,
    listener text NOT NULL,  -- one id per web process
    expires_at timestamptz NOT NULL,  -- renewed while the process lives; expired rows are swept
    PRIMARY KEY (job_id, listener)
);
COMMENT ON TABLE pgmq_worker.job_watchers IS 'pgmq-worker: jobs a web process is streaming';

CREATE FUNCTION pgmq_worker.notify_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(w.id::text, ',')
        FROM (
            SELECT c.id, (row_number() OVER ()) / 200 AS part
            FROM changed AS c
            WHERE EXISTS (SELECT FROM pgmq_worker.job_watchers AS jw WHERE jw.job_id = c.id)
        ) AS w
        GROUP BY w.part
    LOOP
        PERFORM pg_notify('pgmq_worker_jobs', chunk);
    END LOOP;
    RETURN NULL;
END
$$;

-- A trigger with transition tables may name only one event, hence two.
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON pgmq_worker.jobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgmq_worker.notify_jobs();
CREATE TRIGGER jobs_notify_update AFTER UPDATE ON pgmq_worker.jobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgmq_worker.notify_jobs();
