"""`JobRegistry`: which miner session owns which job id (kept apart from `session` for size)."""

from __future__ import annotations

__all__ = ["JobRegistry"]


class JobRegistry:
    """Which session owns which job id. Shared by the sessions of one batch, so that a miner
    answering for another miner's job is recognised as such ("foreign") rather than "unknown"."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def register(self, job_uuid: str, owner: str) -> None:
        current = self._owners.setdefault(job_uuid, owner)
        if current != owner:
            raise ValueError(f"job {job_uuid} is already registered to {current}")

    def owner(self, job_uuid: str) -> str | None:
        return self._owners.get(job_uuid)
