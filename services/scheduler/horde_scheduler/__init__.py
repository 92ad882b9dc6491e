"""scheduler: chain watch, metagraph sync, cycles, when-to-run, batch coordinator."""
