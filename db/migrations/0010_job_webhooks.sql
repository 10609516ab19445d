-- Progress webhooks: a job may carry a callback URL; the worker POSTs its status changes there,
-- signed (Standard Webhooks), retried with backoff, never blocking the job.
ALTER TABLE pgmq_worker.jobs ADD COLUMN webhook_url text
    CHECK (webhook_url IS NULL OR (length(webhook_url) <= 2000 AND webhook_url ~ '^https?://'));
