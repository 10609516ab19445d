-- The Realtime Broadcast policy of 0005 checked only the channel being joined (realtime.topic()),
-- never the row's own topic: a user who may join `job:<their id>` could read every other job's
-- broadcasts in realtime.messages under that setting. The row's topic must be the joined one.
-- Only where 0005 created the policy (Supabase).
DO $$
BEGIN
    IF to_regclass('realtime.messages') IS NOT NULL
       AND EXISTS (
           SELECT 1 FROM pg_policies
           WHERE schemaname = 'realtime' AND tablename = 'messages' AND policyname = 'pgmq_worker_job_topics'
       ) THEN
        ALTER POLICY pgmq_worker_job_topics ON realtime.messages
            USING (
                topic = (SELECT realtime.topic())
                AND extension = 'broadcast'
                AND (SELECT realtime.topic()) LIKE 'job:%'
                AND EXISTS (
                    SELECT 1 FROM pgmq_worker.jobs AS j
                    WHERE j.id::text = substr((SELECT realtime.topic()), 5) AND j.owner = (SELECT auth.uid())
                )
            );
    END IF;
END
$$;
