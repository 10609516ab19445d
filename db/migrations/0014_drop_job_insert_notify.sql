-- No NOTIFY trigger for inserted job rows: nobody can watch a job before its row exists (a
-- stream registers a job id it read from the row, and ids are made by the insert), so the
-- statement trigger of 0006 only ever found nothing to say, at the cost of a transition table
-- and a plpgsql call in every enqueue: 8% of `enqueue` throughput at 8 producers (pgbench,
-- PostgreSQL 15). Changes to existing rows still notify (jobs_notify_update; an
-- INSERT ... ON CONFLICT DO UPDATE reports its updated rows there too).
DROP TRIGGER IF EXISTS jobs_notify_insert ON pgmq_worker.jobs;
