"""Organic (facilitator) jobs in the job-runner: pick the miner, run the job on it, report the
outcome (docs/organic.md, "Running organic jobs").

`details` and `outcomes` are pure decisions, `selection` picks the miner (pure choice plus its
database part), `run` talks to the miner, `store` writes rows, events and statuses, and `handler`
ties them together for the bus.
"""
