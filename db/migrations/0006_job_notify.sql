-- Job changes for our own listeners (the web process's SSE streams): after each statement that
-- inserts or updates job rows, NOTIFY pgmq_worker_jobs with the changed ids, comma-separated,
-- in chunks that stay under NOTIFY's 8000-byte payload limit. One notification per statement
-- (not per row) keeps batched worker settles cheap. Supabase users can use Realtime instead;
-- both see the same rows.
CREATE FUNCTION pgmq_worker.notify_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(id::text, ',')
        FROM (SELECT id, (row_number() OVER ()) / 200 AS part FROM changed) AS c
        GROUP BY part
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
