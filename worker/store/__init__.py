"""The worker's own SQL, beside the parts that run it: deliveries, job steps, fan-outs, waiters."""
