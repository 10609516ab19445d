-- Insert notifications only while a worker waits for them.
--
-- NOTIFY serialises the commits that send one (a global lock on the notification queue at
-- commit): with 8 concurrent producers, plain pgmq.send into a queue with the 0002 trigger ran at
-- 0.39x of the same send without it (2,596 against 6,723 a second, pgbench, PostgreSQL 15). Yet a
-- notification only matters to a worker that is idle and LISTENing; a busy worker reads again as
-- soon as a slot frees, and no worker at all needs none. So an idle, listening worker announces
-- itself here (one row per worker process and queue, renewed while it stays idle, expiring on
-- its own when it gets busy or dies), and the trigger notifies only while such a row is live:
-- producers pay one index lookup instead of the commit-time lock when nobody waits.
--
-- The race this opens (a producer that saw no waiter commits just after the worker's last
-- read) is closed by the worker: it announces first, reads once more, then waits.
CREATE UNLOGGED TABLE pgmq_worker.waiters (
    queue_table text NOT NULL,  -- the queue's table name, q_<queue> (the trigger's TG_TABLE_NAME)
    worker text NOT NULL,  -- one id per worker process
    until timestamptz NOT NULL,  -- live while in the future
    PRIMARY KEY (queue_table, worker)
);
COMMENT ON TABLE pgmq_worker.waiters IS 'pgmq-worker: idle workers that want insert notifications';

-- SECURITY DEFINER: a producer's role (the web process, a Supabase client calling pgmq.send) need
-- not be able to read pgmq_worker.waiters for its inserts to work.
CREATE OR REPLACE FUNCTION pgmq_worker.notify_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (
        SELECT FROM pgmq_worker.waiters AS w
        WHERE w.queue_table = TG_TABLE_NAME AND w.until > now()
    ) THEN
        PERFORM pg_notify('pgmq.' || TG_TABLE_NAME || '.INSERT', NULL);
    END IF;
    RETURN NULL;
END
$$;
