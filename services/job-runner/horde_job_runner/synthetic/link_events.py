"""What a shard does when one of its miner links reports something (docs/synthetic-batch.md §1, §3).

`MinerLink` calls a `ShardListener` (the `LinkListener` protocol) from its reader as frames arrive:

* a manifest goes to the `ManifestIntake`: capped, and that miner's job generation starts at once,
  so generation overlaps the manifest wait of the other miners;
* an accept is answered with a signed JobAccepted receipt, queued on the link's writer;
* a spin-up or final answer resolves the job in the `JobLedger` wait it is in;
* a miner's own fault is a MINER_SYNTHETIC_JOB_FAILURE event; our bug while handling the link is
  a VALIDATOR_FAILURE that excludes that miner's jobs (`JobLedger.link_failure`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS, ExecutorClass
from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.scoring import (
    MAX_EXECUTORS_PER_CLASS,
    MAX_EXECUTORS_PER_MINER,
    cap_manifest,
)

if TYPE_CHECKING:
    from horde_common.config import HashcatDifficulty
    from horde_job_runner.generators import JobGenerator
    from horde_job_runner.synthetic.generation import JobFactory
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.link import MinerLink
    from horde_job_runner.synthetic.model import Clock, DynamicValues, JobState
    from horde_job_runner.synthetic.shard_services import EventLog, Signer

__all__ = ["ManifestIntake", "ShardListener"]

T = SystemEventType
S = SystemEventSubtype


class ManifestIntake:
    """The manifests as they come in: each miner's capped counts and its running job generation.

    Only the manifest phase and the listener touch it; what it holds once the phase is over is
    handed on as `manifests.ManifestOutcome`.
    """

    def __init__(
        self,
        events: EventLog,
        *,
        dynamic: DynamicValues,
        job_factory: JobFactory,
        weights_version: int,
        difficulty: HashcatDifficulty | str,
    ) -> None:
        self._events = events
        self._dynamic = dynamic
        self._job_factory = job_factory
        self._weights_version = weights_version
        self._difficulty = difficulty
        self.counts: dict[str, dict[ExecutorClass, int]] = {}
        self.generation: dict[str, asyncio.Task[list[JobGenerator]]] = {}

    def take(self, link: MinerLink) -> None:
        """The first manifest of `link`: cap it, record the miner's faults in it, start generating."""
        manifest = link.manifest
        if manifest is None or link.hotkey in self.counts:
            return
        invalid = manifest.invalid_classes()
        if invalid:
            # The original raised on the first bad entry (docs/miner-protocol.md quirk B.6); we keep
            # every valid entry and report the rest.
            self._events.record(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.MANIFEST_ERROR,
                f"manifest of {link.name} has unknown integer executor classes {invalid}",
                miner_hotkey=link.hotkey,
            )
        # Capped before anything is generated or stored: the rows hold the capped counts.
        capping = cap_manifest(manifest.executor_counts(), self._dynamic.miner_max_executors_per_class)
        capped = capping.counts
        if capping.excess:
            self._events.record(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.MANIFEST_ERROR,
                f"manifest of {link.name} claims more executors than the validator accepts: "
                + ", ".join(f"{c}: {n} -> {k}" for c, (n, k) in capping.excess.items()),
                miner_hotkey=link.hotkey,
                claimed={str(c): n for c, (n, _) in capping.excess.items()},
                capped={str(c): k for c, (_, k) in capping.excess.items()},
                max_executors_per_class=MAX_EXECUTORS_PER_CLASS,
                max_executors_per_miner=MAX_EXECUTORS_PER_MINER,
            )
        self.counts[link.hotkey] = capped
        hashcat = [(str(c), n) for c, n in capped.items() if c != LLM_EXECUTOR_CLASS]
        if hashcat:
            self.generation[link.hotkey] = asyncio.ensure_future(
                self._job_factory.generate(link.hotkey, hashcat, self._weights_version, self._difficulty)
            )

    def drop(self, hotkey: str) -> None:
        """The miner failed its manifest: no counts, no jobs (its generation, if any, is cancelled)."""
        self.counts.pop(hotkey, None)
        task = self.generation.pop(hotkey, None)
        if task is not None:
            task.cancel()

    def cancel_generation(self) -> None:
        """Cancel whatever generation is still running (the shard is over)."""
        for task in self.generation.values():
            task.cancel()


class ShardListener:
    """The `LinkListener` of a shard run: what each link's reader reports, applied to the shard."""

    def __init__(
        self,
        *,
        intake: ManifestIntake,
        ledger: JobLedger,
        events: EventLog,
        signer: Signer,
        clock: Clock,
        messages: Counter[str],
        receipt_send_s: float,
    ) -> None:
        self._intake = intake
        self._ledger = ledger
        self._events = events
        self._signer = signer
        self._clock = clock
        self._messages = messages
        self._receipt_send_s = receipt_send_s

    def on_manifest(self, link: MinerLink) -> None:
        self._intake.take(link)

    def on_accepted(self, link: MinerLink, job: JobState, at: datetime) -> None:
        """Sign the JobAccepted receipt now and queue it on the link's writer (5 s to go out)."""
        try:
            payload, signature, frame = rc.accepted_receipt_frame(
                self._signer.sign,
                job_uuid=job.job_uuid,
                miner_hotkey=job.miner_hotkey,
                validator_hotkey=self._signer.hotkey,
                time_accepted=at,
                now=self._clock.now(),
            )
            job.accepted_receipt = (payload, signature)
        except Exception as exc:
            self.on_link_failure(link, exc, "_send_initial_job_request")
            return
        self._messages["V0JobAcceptedReceiptRequest"] += 1
        link.post(
            frame,
            timeout_s=self._receipt_send_s,
            on_failure=self._events.receipt_failure(job, "JobAccepted", "_send_initial_job_request"),
        )

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None:
        job.spin_up_resolved = True
        self._ledger.spin_up.discard(job)

    def on_final(self, link: MinerLink, job: JobState) -> None:
        self.on_spin_up_resolved(link, job)
        self._ledger.final.discard(job)

    def on_miner_event(self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]) -> None:
        self._events.record(
            T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data
        )

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        self._ledger.link_failure(link, exc, where)
