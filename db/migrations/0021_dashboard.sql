-- The dashboard's job list (web/dashboard, queues/job_list.py): newest first, keyset-paginated on
-- (created_at, id), filtered by queue, status, owner, time and text in the error. One index per
-- filter that can be selective, each ending in the sort key so a page is an index range scan that
-- stops after one page of rows; an owner's jobs already have jobs_owner_created_idx (0003).
--
-- Every index costs each job-row write an entry (the read's and the settle's status changes are
-- not HOT updates: 0015), so there are as few as the pages need: bench/dashboard_pages.py measures
-- the pages at 1,000,000 rows and the enqueue cost with and without these. The errored-jobs index
-- is partial: only rows that hold an error pay for it. On a large existing table, build them by
-- hand first with CREATE INDEX CONCURRENTLY under these names (the IF NOT EXISTS then skips them).
CREATE INDEX IF NOT EXISTS jobs_created_idx ON pgmq_worker.jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_queue_created_idx ON pgmq_worker.jobs (queue, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_status_created_idx ON pgmq_worker.jobs (status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_errored_created_idx ON pgmq_worker.jobs (created_at, id)
    WHERE error IS NOT NULL;
-- The queues page's last hour (throughput, failure rate, durations): finished rows by time.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON pgmq_worker.jobs (finished_at)
    WHERE finished_at IS NOT NULL;
