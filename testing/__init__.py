"""Test helpers shared by every package's tests (not shipped in any package).

The fixture modules here are pytest plugins listed in the repo-root `conftest.py`; the plain helpers
(settings builders, bucket makers, the miner-fleet shard runner) are imported by test modules, which
`--import-mode=importlib` would otherwise not let share code.
"""
