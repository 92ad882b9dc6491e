"""Manifests and jobs (docs/synthetic-batch.md §1 stages `_multi_get_miner_manifest` to
`_generate_jobs`, §3).

`collect_manifests` connects and authenticates every miner at once, each within the manifest
timeout, and waits for its first manifest. A miner's jobs start being generated (in a worker
process) as soon as its manifest is in (`link_events.ManifestIntake`), so generation overlaps the
manifest wait instead of following it; `collect_jobs` only bounds what is left of it and registers
the jobs with the sessions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS, ExecutorClass
from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.transport import MinerConnectionError

if TYPE_CHECKING:
    from horde_job_runner.generators import JobGenerator
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.link import MinerLink
    from horde_job_runner.synthetic.link_events import ManifestIntake
    from horde_job_runner.synthetic.model import BatchTimeouts
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = ["ManifestOutcome", "collect_jobs", "collect_manifests"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype


@dataclass(frozen=True)
class ManifestOutcome:
    """The manifest phase's result: each miner's capped counts, and its job generation (running).

    Only miners whose manifest arrived in time are here.
    """

    counts: Mapping[str, Mapping[ExecutorClass, int]]
    generation: Mapping[str, asyncio.Task[list[JobGenerator]]]

    @property
    def llm_executor_count(self) -> int:
        """LLM executors: their jobs need prompt samples (`llm_samples`), not the generation here."""
        return sum(c.get(LLM_EXECUTOR_CLASS, 0) for c in self.counts.values())

    @property
    def job_executor_count(self) -> int:
        """Executors that get a generated (hashcat) job: every class but the LLM one."""
        return sum(n for c in self.counts.values() for cls, n in c.items() if cls != LLM_EXECUTOR_CLASS)


async def collect_manifests(
    links: Links,
    intake: ManifestIntake,
    *,
    timeouts: BatchTimeouts,
    events: EventLog,
    ledger: JobLedger,
) -> ManifestOutcome:
    """Connect every link and wait for its manifest (each within `timeouts.manifest`).

    A miner that fails (cannot connect, no manifest in time, closed for its own fault) gets a
    MINER_SYNTHETIC_JOB_FAILURE event, no counts and no jobs; its link is closed.
    """
    await asyncio.gather(
        *(_manifest_of(link, intake, timeouts=timeouts, events=events, ledger=ledger) for link in links)
    )
    events.record(
        T.VALIDATOR_TELEMETRY,
        S.CHECKPOINT,
        "manifests",
        stage="manifests_done",
        manifests=links.manifest_count,
    )
    return ManifestOutcome(counts=dict(intake.counts), generation=dict(intake.generation))


async def _manifest_of(
    link: MinerLink, intake: ManifestIntake, *, timeouts: BatchTimeouts, events: EventLog, ledger: JobLedger
) -> None:
    failure: tuple[str, str, dict[str, Any]] | None = None
    try:
        async with asyncio.timeout(timeouts.manifest):
            await link.open()
            await link.manifest_event.wait()
        if link.manifest is None:
            failure = (
                "MANIFEST_ERROR",
                link.close_reason or "connection closed by the validator after an UNAUTHORIZED error",
                {},
            )
    except MinerConnectionError as exc:
        failure = ("MINER_CONNECTION_ERROR", str(exc), {"func": "connect"})
    except TimeoutError:
        failure = ("MANIFEST_TIMEOUT", f"no manifest from {link.name} within {timeouts.manifest:g} s", {})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # Not a link error we know: our bug. The miner gets no jobs, and no failure is stored.
        log.exception("manifest of %s", link.name)
        ledger.exclude_link(link, f"{type(exc).__name__}: {exc}", "_multi_get_miner_manifest")
        await link.close(timeouts.close)
        return
    if failure is not None:
        subtype, description, data = failure
        intake.drop(link.hotkey)
        events.record(T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data)
        await link.close(timeouts.close)


async def collect_jobs(
    manifests: ManifestOutcome,
    links: Links,
    *,
    timeouts: BatchTimeouts,
    events: EventLog,
    rng: random.Random,
) -> list[JobState]:
    """Every generated job, registered with its miner's session, in a shuffled order.

    Generation still running after `timeouts.generation` is cancelled; a miner whose generation
    failed or was cancelled gets no jobs, and that is our VALIDATOR_FAILURE, never the miner's.
    """
    jobs: list[JobState] = []
    if manifests.generation:
        # Generation started as the manifests came in; bound what is left of it.
        await asyncio.wait(list(manifests.generation.values()), timeout=timeouts.generation)
    for hotkey, task in manifests.generation.items():
        link = links[hotkey]
        try:
            if not task.done():
                task.cancel()
                raise TimeoutError(f"job generation took longer than {timeouts.generation:g} s")
            generators = task.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job generation for %s", link.name)
            events.record(
                T.VALIDATOR_FAILURE,
                S.GENERIC_ERROR,
                f"job generation failed for {link.name}: {type(exc).__name__}: {exc}",
                miner_hotkey=hotkey,
                stage="_generate_jobs",
            )
            continue
        for gen in generators:
            executor_class = ExecutorClass(gen.executor_class)
            timeout = (
                timeouts.job_timeout if timeouts.job_timeout is not None else float(gen.timeout_seconds())
            )
            job = JobState(
                job_uuid=str(gen.job_uuid),
                miner_hotkey=hotkey,
                executor_class=executor_class,
                generator=gen,
                spin_up=timeouts.spin_up_for(executor_class),
                timeout=timeout,
            )
            link.session.register_job(job.job_uuid, executor_class)
            link.jobs[job.job_uuid] = job
            jobs.append(job)
    rng.shuffle(jobs)
    return jobs
