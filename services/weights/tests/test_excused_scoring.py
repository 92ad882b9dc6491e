"""Excused declines in batch scoring (docs/scoring.md §1.2): a synthetic job the miner declined while
its executor ran our organic job counts as a completed job of its class at its base score, never
multiplied. The rows are read back from real Postgres as the job-runner stores them."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models import SyntheticJob
from horde_common.db.models.enums import JobStatus
from horde_weights.horde_score import size_factor
from horde_weights.scoring import ScoredJob, score_batch, score_batch_by_class
from horde_weights.weights_rows import batch_jobs

Kit = Any  # the `kit` fixture of conftest.py
Sessions = async_sessionmaker[AsyncSession]

SPIN = "spin_up-4min.gpu-24gb"
ALWAYS_ON = "always_on.gpu-24gb"
WEIGHTS = {SPIN: 8.0, ALWAYS_ON: 2.0}
EXCUSED_COMMENT = "excused: executor busy with an organic job of this validator"


def test_an_excused_job_counts_as_one_completed_job_at_its_base_score() -> None:
    # hk1: one tested job (1.3 with the multiplier) and one excused; hk2: the same tested job and a
    # decline that nothing excused.
    jobs = [
        ScoredJob("hk1", SPIN, 1.3, success=True, multiplier=1.3),
        ScoredJob("hk1", SPIN, 1.0, success=True, excused=True),
        ScoredJob("hk2", SPIN, 1.3, success=True, multiplier=1.3),
        ScoredJob("hk2", SPIN, 0.0),
    ]
    by_class = score_batch_by_class(jobs, WEIGHTS).by_class[SPIN]
    # Both miners have n = 2 (the excused job raises n like any completed job); hk1's sum is 2.3.
    hk1, hk2 = 2.3 * size_factor(2), 1.3 * size_factor(2)
    assert by_class == pytest.approx({"hk1": 8 * hk1 / (hk1 + hk2), "hk2": 8 * hk2 / (hk1 + hk2)})


def test_an_excused_job_is_never_multiplied() -> None:
    # A row that (wrongly) carries a multiplier still counts at its base score.
    stray = ScoredJob("hk1", ALWAYS_ON, 1.3, success=True, excused=True, multiplier=1.3)
    assert stray.counted_score == pytest.approx(1.0)
    plain = ScoredJob("hk2", ALWAYS_ON, 1.0, success=True, excused=True)
    assert score_batch([stray, plain], WEIGHTS) == pytest.approx({"hk1": 1.0, "hk2": 1.0})
    # An ordinary success keeps its multiplier (the contrast that makes the rule visible).
    assert ScoredJob("hk1", ALWAYS_ON, 1.3, success=True, multiplier=1.3).counted_score == 1.3


def test_an_excused_but_excluded_job_does_not_count() -> None:
    jobs = [ScoredJob("hk1", SPIN, 1.0, success=True, excused=True, excluded=True)]
    assert score_batch(jobs, WEIGHTS) == {}


async def test_stored_excused_rows_score_as_completed_jobs_of_their_class(
    kit: Kit, sessions: Sessions
) -> None:
    batch_id = await kit.seed_batch(10_000, [("hk1", 1.3), ("hk2", 1.3), ("hk2", 0.0)])
    async with sessions.begin() as s:
        for executor_class in (SPIN, ALWAYS_ON):
            s.add(
                SyntheticJob(
                    job_uuid=uuid.uuid4(),
                    batch_id=batch_id,
                    miner_hotkey="hk1",
                    executor_class=executor_class,
                    status=str(JobStatus.EXCUSED),
                    score=1.0,
                    score_manifest_multiplier=None,
                    comment=EXCUSED_COMMENT,
                )
            )
    async with sessions() as s:
        jobs = await batch_jobs(s, batch_id)
    excused = [j for j in jobs if j.excused]
    assert sorted(j.executor_class for j in excused) == [ALWAYS_ON, SPIN]
    assert all(j.success and not j.excluded and j.counted_score == 1.0 for j in excused)
    assert not any(j.excused for j in jobs if j not in excused)

    scores = score_batch_by_class(jobs, WEIGHTS)
    hk1, hk2 = 2.3 * size_factor(2), 1.3 * size_factor(2)
    assert scores.by_class[SPIN] == pytest.approx(
        {"hk1": 8 * hk1 / (hk1 + hk2), "hk2": 8 * hk2 / (hk1 + hk2)}
    )
    assert scores.by_class[ALWAYS_ON] == {"hk1": 2.0}  # the whole class weight: nobody else ran it
    assert math.isclose(sum(scores.scores.values()), 10.0)
