-- Resumable steps: the output of each finished step of a job (`await ctx.step(name, fn)`), so a
-- retry, a crash or a redeploy resumes at the first unfinished step with the earlier outputs,
-- never running a finished step again. Written in its own transaction as each step finishes.
CREATE TABLE pgmq_worker.job_steps (
    job_id uuid NOT NULL REFERENCES pgmq_worker.jobs (id) ON DELETE CASCADE,
    name text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0,  -- times this step was started
    output jsonb,
    error jsonb,
    started_at timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (job_id, name)
);
ALTER TABLE pgmq_worker.job_steps ENABLE ROW LEVEL SECURITY;  -- no policy: only the worker's role
COMMENT ON TABLE pgmq_worker.job_steps IS 'pgmq-worker: outputs of finished steps, for resuming';
