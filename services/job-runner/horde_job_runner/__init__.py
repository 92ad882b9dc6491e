"""job-runner: miner sessions for synthetic shards, organic jobs and trusted-miner jobs."""
