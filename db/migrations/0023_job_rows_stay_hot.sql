-- Job-row writes that stay HOT (heap-only tuple updates: no new index entries, the old version
-- pruned inside its page). An UPDATE is HOT only when no indexed column changes, and a column
-- in a partial index's WHERE counts: jobs_active_idempotency_key (0003) filtered on `status`, so
-- every status change (running at the read, the result at the settle) added an entry to every
-- index of the table. Under a long transaction (an open psql session, an analytics query) none of
-- those entries could be removed, and jobs grew a version and two index entries per write.
--
-- The active idempotency key becomes a generated column: the key while the job is unfinished,
-- NULL once it is done. Unique per queue among unfinished jobs exactly as before, and a job
-- without a key (NULL before and after) changes no indexed column when its status moves.
ALTER TABLE pgmq_worker.jobs ADD COLUMN active_key text
    GENERATED ALWAYS AS (
        CASE WHEN status IN ('queued', 'running', 'failed') THEN idempotency_key END
    ) STORED;
-- Same name, same guarantee, on the new column (the migration is one transaction).
DROP INDEX pgmq_worker.jobs_active_idempotency_key;
CREATE UNIQUE INDEX jobs_active_idempotency_key ON pgmq_worker.jobs (queue, active_key)
    WHERE active_key IS NOT NULL;
-- Vacuum early on a table that gains a dead version per write: storage parameters, visible in
-- \d+ pgmq_worker.jobs (docs/concepts/under-pressure.md). No fillfactor below 100: the indexes of
-- retention (0020, finished_at) and the dashboard (0021, status and error) make status changes
-- non-HOT again, and room kept free in each page would only double the table.
ALTER TABLE pgmq_worker.jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
COMMENT ON COLUMN pgmq_worker.jobs.active_key IS
    'pgmq-worker: idempotency_key while the job is unfinished (the unique index''s key), else NULL';
