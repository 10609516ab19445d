-- No index on (status, updated_at): no statement of pgmq-worker's reads jobs by status, and the
-- index cost every job-row write. An enqueue inserts into it, and the read's and the settle's
-- status changes are not HOT updates, so each adds an entry too: two a job, on every job. It was
-- 7% of an `enqueue_batch` statement of 1000 (median of six interleaved pairs: 8.86 -> 8.28 ms on
-- embedded PostgreSQL 18, 13.78 -> 12.86 on PostgreSQL 15). Dashboards that list jobs by status
-- add the index they need (README, "Job row").
DROP INDEX IF EXISTS pgmq_worker.jobs_status_updated_idx;
