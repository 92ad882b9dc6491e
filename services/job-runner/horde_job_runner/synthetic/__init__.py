"""Synthetic job batches (docs/miner-protocol.md §3): one shard of a batch, run against its miners.

* `batch.run_shard(request, deps)`: the orchestrator (connect, manifests, jobs, spin-up, release,
  job requests, scoring, receipts, persistence); every dependency is injected through `BatchDeps`.
* `handler.handle_batch_shard_requested` / `handler.handle_batch_released`: the bus handlers.
* `debug_run.run_debug_batch`: one batch in-process with no scheduler and no chain
  (`horde debug run-synthetic-jobs`).
"""
