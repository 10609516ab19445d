-- Supabase Realtime Broadcast (what Supabase recommends at scale, over postgres_changes): every
-- change of a job row is sent to the private topic `job:<id>`, and an authenticated user may
-- receive the topics of the jobs they own. Only where `realtime.send` exists (Supabase).
CREATE FUNCTION pgmq_worker.broadcast_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM realtime.send(to_jsonb(NEW), lower(TG_OP), 'job:' || NEW.id::text, true);
    EXCEPTION WHEN OTHERS THEN
        -- A broadcast is a notification: it must never fail the worker's settle or an enqueue.
        RAISE WARNING 'pgmq_worker: realtime.send for job % failed: %', NEW.id, SQLERRM;
    END;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF to_regprocedure('realtime.send(jsonb, text, text, boolean)') IS NOT NULL THEN
        CREATE TRIGGER jobs_broadcast AFTER INSERT OR UPDATE ON pgmq_worker.jobs
            FOR EACH ROW EXECUTE FUNCTION pgmq_worker.broadcast_job();
        IF to_regclass('realtime.messages') IS NOT NULL
           AND to_regprocedure('realtime.topic()') IS NOT NULL
           AND to_regprocedure('auth.uid()') IS NOT NULL THEN
            CREATE POLICY pgmq_worker_job_topics ON realtime.messages
                FOR SELECT TO authenticated
                USING (
                    realtime.topic() LIKE 'job:%'
                    AND EXISTS (
                        SELECT 1 FROM pgmq_worker.jobs AS j
                        WHERE j.id::text = substr(realtime.topic(), 5) AND j.owner = (SELECT auth.uid())
                    )
                );
        END IF;
    END IF;
END
$$;
