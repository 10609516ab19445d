-- One row per job: what the UI watches (Supabase Realtime streams row changes; the web process
-- serves the same rows). The worker writes it in the same statement that reads or settles the
-- message, so a job is never `succeeded` while its message can still be redelivered.
--
-- status: queued (waiting, or released on shutdown) -> running -> succeeded | failed (this
-- attempt failed, a retry is scheduled) -> running ... -> dead (dead-lettered) | cancelled.
CREATE TABLE pgmq_worker.jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    queue text NOT NULL,
    msg_id bigint NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    progress smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    step text,
    detail jsonb,
    attempts integer NOT NULL DEFAULT 0,
    result jsonb,
    error jsonb,
    owner uuid,
    idempotency_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT jobs_queue_msg_id_key UNIQUE (queue, msg_id)
);
CREATE INDEX jobs_owner_created_idx ON pgmq_worker.jobs (owner, created_at DESC) WHERE owner IS NOT NULL;
CREATE INDEX jobs_status_updated_idx ON pgmq_worker.jobs (status, updated_at);
CREATE UNIQUE INDEX jobs_active_idempotency_key ON pgmq_worker.jobs (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'running', 'failed');
COMMENT ON TABLE pgmq_worker.jobs IS 'pgmq-worker: one row per job, kept current by the worker';
