"""`LinkEvents`: what a shard does when one of its miner links reports something.

`MinerLink` calls these (the `LinkListener` protocol) from its reader as frames arrive: a manifest
is capped and starts that miner's job generation at once, an accept is answered with a signed
JobAccepted receipt, and a spin-up or final answer wakes the phase that waits for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.scoring import (
    MAX_EXECUTORS_PER_CLASS,
    MAX_EXECUTORS_PER_MINER,
    cap_manifest,
)
from horde_job_runner.synthetic.shard_state import S, ShardState, T

__all__ = ["LinkEvents"]


class LinkEvents(ShardState):
    """The `LinkListener` side of a shard run (`on_link_failure` lives on `ShardState`)."""

    def on_manifest(self, link: MinerLink) -> None:
        manifest = link.manifest
        if manifest is None or link.hotkey in self.counts:
            return
        invalid = manifest.invalid_classes()
        if invalid:
            # Reference quirk 6 raised on the first bad entry; we keep every valid entry and report.
            self._event(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.MANIFEST_ERROR,
                f"manifest of {link.name} has unknown integer executor classes {invalid}",
                miner_hotkey=link.hotkey,
            )
        # Capped before anything is generated or stored: the rows hold the capped counts.
        capping = cap_manifest(manifest.executor_counts(), self.dynamic.miner_max_executors_per_class)
        capped = capping.counts
        if capping.excess:
            self._event(
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
            self.gen_tasks[link.hotkey] = asyncio.ensure_future(
                self.deps.job_factory.generate(
                    link.hotkey, hashcat, self.request.weights_version, self.deps.difficulty
                )
            )

    def on_accepted(self, link: MinerLink, job: JobState, at: datetime) -> None:
        """Sign the JobAccepted receipt now and queue it on the link's writer (5 s to go out)."""
        try:
            payload, signature, frame = rc.accepted_receipt_frame(
                self.sign,
                job_uuid=job.job_uuid,
                miner_hotkey=job.miner_hotkey,
                validator_hotkey=self.validator_hotkey,
                time_accepted=at,
                now=self.clock.now(),
            )
            job.accepted_receipt = (payload, signature)
        except Exception as exc:
            self.on_link_failure(link, exc, "_send_initial_job_request")
            return
        self.message_counts["V0JobAcceptedReceiptRequest"] += 1
        link.post(
            frame,
            timeout_s=self.t.receipt_send,
            on_failure=self._receipt_failure(job, "JobAccepted", "_send_initial_job_request"),
        )

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None:
        job.spin_up_resolved = True
        self.spinup_pending.discard(job)
        if not self.spinup_pending:
            self.spinup_done.set()

    def on_final(self, link: MinerLink, job: JobState) -> None:
        self.on_spin_up_resolved(link, job)
        self.final_pending.discard(job)
        if not self.final_pending:
            self.final_done.set()

    def on_miner_event(self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]) -> None:
        self._event(T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data)
