-- Job artifacts: files a job produces (a sentence's audio, a generated image), kept beside the
-- job in Postgres because the worker and the web process run on different machines: the worker
-- stores them (`await ctx.artifact(name, data, content_type)`), the web process serves them at
-- `GET /jobs/{job_id}/artifacts/{name}` to whoever may see the job. Storing a name again
-- replaces it, so a step that runs twice leaves one file. They go when their job row goes.
CREATE TABLE pgmq_worker.job_artifacts (
    job_id uuid NOT NULL REFERENCES pgmq_worker.jobs (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$'),
    content_type text NOT NULL CHECK (length(content_type) BETWEEN 3 AND 200),
    data bytea NOT NULL,
    size integer GENERATED ALWAYS AS (octet_length(data)) STORED
        CHECK (size <= 10 * 1024 * 1024),  -- queues/artifacts.py MAX_ARTIFACT_BYTES
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);
ALTER TABLE pgmq_worker.job_artifacts ENABLE ROW LEVEL SECURITY;  -- no policy: only the worker's role
COMMENT ON TABLE pgmq_worker.job_artifacts IS 'pgmq-worker: files produced by jobs, served by the web process';
