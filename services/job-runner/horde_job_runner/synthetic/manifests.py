"""`ManifestPhase`: connect to every miner, get its manifest, collect its generated jobs (stages 2–4).

All miners are connected and authenticated at once, each within the manifest timeout. A miner's
jobs start being generated (in a worker process) as soon as its manifest is in (`LinkEvents`), so
generation overlaps the manifest wait instead of following it; `_collect_jobs` only bounds what is
left of it and registers the jobs with the sessions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from horde_common.bus.messages import MinerEndpoint
from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_common.protocol.miner.session import MinerSession
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.link_events import LinkEvents
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.shard_state import S, T
from horde_job_runner.synthetic.transport import MinerConnectionError

__all__ = ["ManifestPhase"]

log = logging.getLogger(__name__)


class ManifestPhase(LinkEvents):
    """Links, manifests and job collection; each link reports to this run (`LinkEvents`)."""

    def _open_links(self) -> None:
        """One `MinerLink` per miner, in a shuffled order; nothing is connected until `_manifests`."""
        deps = self.deps
        miners: list[MinerEndpoint] = list(self.request.miners)
        deps.rng.shuffle(miners)
        for endpoint in miners:
            if endpoint.hotkey in self.link_by_hotkey:
                continue  # one connection per miner, even if listed twice
            link = MinerLink(
                endpoint,
                self._make_session(endpoint),
                clock=self.clock,
                listener=self,
                transport_factory=deps.transport_factory,
                transport_settings=deps.transport_settings,
                sleep=deps.sleep,
                rng=deps.rng.random,
            )
            self.links.append(link)
            self.link_by_hotkey[endpoint.hotkey] = link

    def _make_session(self, endpoint: MinerEndpoint) -> MinerSession:
        if self.deps.session_factory is not None:
            return self.deps.session_factory(endpoint, self.registry)
        return MinerSession(
            validator_hotkey=self.validator_hotkey,
            sign=self.sign,
            miner_hotkey=endpoint.hotkey,
            miner_address=endpoint.address,
            miner_port=endpoint.port,
            registry=self.registry,
        )

    # ----------------------------------------------------------------------- manifests

    async def _manifests(self) -> None:
        await asyncio.gather(*(self._manifest_of(link) for link in self.links))
        self._event(
            T.VALIDATOR_TELEMETRY,
            S.CHECKPOINT,
            "manifests",
            stage="manifests_done",
            manifests=sum(1 for link in self.links if link.manifest is not None),
        )

    async def _manifest_of(self, link: MinerLink) -> None:
        failure: tuple[str, str, dict[str, Any]] | None = None
        try:
            async with asyncio.timeout(self.t.manifest):
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
            failure = ("MANIFEST_TIMEOUT", f"no manifest from {link.name} within {self.t.manifest:g} s", {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not a link error we know: our bug. The miner gets no jobs, and no failure is stored.
            log.exception("manifest of %s", link.name)
            self._exclude_link(link, f"{type(exc).__name__}: {exc}", "_multi_get_miner_manifest")
            failure = None
            await link.close(self.t.close)
            return
        if failure is not None:
            subtype, description, data = failure
            self.counts.pop(link.hotkey, None)
            gen_task = self.gen_tasks.pop(link.hotkey, None)
            if gen_task is not None:
                gen_task.cancel()
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data)
            await link.close(self.t.close)

    async def _insufficient_prompts(self, llm_count: int) -> None:
        """LLM executors get no jobs until prompt samples exist (cross-validation); tell once a day."""
        if self.insufficient_prompts_recently:
            return
        self._event(
            T.VALIDATOR_TELEMETRY,
            S.INSUFFICIENT_PROMPTS,
            "not enough answered prompt samples: no LLM jobs in this batch",
            llm_executor_count=llm_count,
            prompt_samples_available=0,
        )

    # ----------------------------------------------------------------------- generation

    async def _collect_jobs(self) -> None:
        jobs: list[JobState] = []
        if self.gen_tasks:
            # Generation started as the manifests came in; bound what is left of it.
            await asyncio.wait(list(self.gen_tasks.values()), timeout=self.t.generation)
        for hotkey, task in self.gen_tasks.items():
            link = self.link_by_hotkey[hotkey]
            try:
                if not task.done():
                    task.cancel()
                    raise TimeoutError(f"job generation took longer than {self.t.generation:g} s")
                generators = task.result()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job generation for %s", link.name)
                self._event(
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
                    self.t.job_timeout if self.t.job_timeout is not None else float(gen.timeout_seconds())
                )
                job = JobState(
                    job_uuid=str(gen.job_uuid),
                    miner_hotkey=hotkey,
                    executor_class=executor_class,
                    generator=gen,
                    spin_up=self.t.spin_up_for(executor_class),
                    timeout=timeout,
                )
                link.session.register_job(job.job_uuid, executor_class)
                link.jobs[job.job_uuid] = job
                jobs.append(job)
        self.deps.rng.shuffle(jobs)
        self.jobs = jobs
