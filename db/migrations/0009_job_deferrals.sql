-- Deliveries that ended in a deferral (the handler raised RateLimited: the provider said 429,
-- come back later) are not failed attempts: the worker counts attempts as read_ct - deferrals.
ALTER TABLE pgmq_worker.jobs ADD COLUMN deferrals integer NOT NULL DEFAULT 0;
