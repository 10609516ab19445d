-- The schema that holds pgmq-worker's own tables (the migration history lives here too).
-- pgmq's queues stay in the pgmq schema, where the Supabase dashboard looks for them.
CREATE SCHEMA IF NOT EXISTS pgmq_worker;
COMMENT ON SCHEMA pgmq_worker IS 'pgmq-worker: migration history, job rows and worker state';
