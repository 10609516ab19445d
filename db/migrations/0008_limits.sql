-- Shared limits for external APIs: at most `concurrency` holders at once and `per_minute`
-- acquisitions a minute (a token bucket holding one second's worth, at least one: a steady rate,
-- bursts of at most a second's share), across every worker process and machine. One row per
-- limit, locked FOR UPDATE while a slot is taken, so acquirers of one limit take turns; holds
-- carry an expiry so a crashed holder frees its slot.
CREATE TABLE pgmq_worker.limits (
    name text PRIMARY KEY,
    concurrency integer CHECK (concurrency IS NULL OR concurrency >= 1),
    per_minute double precision CHECK (per_minute IS NULL OR per_minute > 0),
    tokens double precision NOT NULL DEFAULT 0,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNLOGGED TABLE pgmq_worker.limit_holds (
    name text NOT NULL,
    holder uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, holder)
);
ALTER TABLE pgmq_worker.limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgmq_worker.limit_holds ENABLE ROW LEVEL SECURITY;

-- Take a slot: 0 when taken (hold `holder` until released or `hold_s` passes), else the seconds
-- to wait before asking again. The limit's settings are those of the latest caller.
CREATE FUNCTION pgmq_worker.limit_acquire(
    p_name text, p_holder uuid, p_concurrency integer, p_per_minute double precision, p_hold_s double precision
) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    lim pgmq_worker.limits;
    now_ts timestamptz := clock_timestamp();
    held integer;
    soonest timestamptz;
BEGIN
    INSERT INTO pgmq_worker.limits (name, concurrency, per_minute, tokens, refilled_at)
    VALUES (p_name, p_concurrency, p_per_minute, greatest(1, coalesce(p_per_minute, 0) / 60.0), now_ts)
    ON CONFLICT (name) DO UPDATE SET concurrency = EXCLUDED.concurrency, per_minute = EXCLUDED.per_minute
    WHERE (limits.concurrency, limits.per_minute) IS DISTINCT FROM (EXCLUDED.concurrency, EXCLUDED.per_minute);
    SELECT * INTO lim FROM pgmq_worker.limits WHERE name = p_name FOR UPDATE;
    DELETE FROM pgmq_worker.limit_holds WHERE name = p_name AND expires_at <= now_ts;
    IF lim.concurrency IS NOT NULL THEN
        SELECT count(*), min(expires_at) INTO held, soonest FROM pgmq_worker.limit_holds WHERE name = p_name;
        IF held >= lim.concurrency THEN
            RETURN 0.05;  -- a holder releases soon (released holds do not notify): look again
        END IF;
    END IF;
    IF lim.per_minute IS NOT NULL THEN
        lim.tokens := least(greatest(1, lim.per_minute / 60.0),
            lim.tokens + extract(epoch FROM now_ts - lim.refilled_at) * lim.per_minute / 60.0);
        IF lim.tokens < 1 THEN
            UPDATE pgmq_worker.limits SET tokens = lim.tokens, refilled_at = now_ts WHERE name = p_name;
            RETURN (1 - lim.tokens) * 60.0 / lim.per_minute;
        END IF;
        UPDATE pgmq_worker.limits SET tokens = lim.tokens - 1, refilled_at = now_ts WHERE name = p_name;
    END IF;
    INSERT INTO pgmq_worker.limit_holds (name, holder, expires_at)
    VALUES (p_name, p_holder, now_ts + make_interval(secs => p_hold_s));
    RETURN 0;
END
$$;
