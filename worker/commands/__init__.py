"""The `pgmq-worker` commands, one module per group; worker.cli puts them under `main`."""
