"""Weights benchmark: the pure part of a weights run, batch scores to commit hash, at subnet sizes.

What one run computes once it has read the batch (`docs/scoring.md` §1–§2, `docs/weights.md`), with
the production functions of `horde_weights`, for 256, 1,024 and 4,096 uids with 8 jobs per miner:

* score: `score_batch` (per-class aggregation, horde score for the spin-up class, normalisation);
* process: `uid_vector` + `process_weights` (MinAllowedWeights, MaxWeightsLimit in float32);
* set u16: `quantize_for_set_weights` (mode `auto`);
* commit: `quantize_for_commit` + `commit_hash` (mode `commit-reveal-v2`);
* run: `plan_weights` + `build_payload` in mode `commit-reveal-v2`, what `weights_run` calls.

Every miner has 6 spin-up and 2 LLM jobs with seeded random scores (about 10 % fail with 0, about
2 % are excluded), so both aggregation paths run. MaxWeightsLimit is set per size halfway between the uniform share
`1/uids` and the largest uncapped share (`cap_u16`), so the cap cuts the top miners at every size:
the slowest path of `normalize_max_weight` (a fixed limit would either cut nothing at 256 uids or,
below `1/uids` at 4,096, take the trivial uniform path).
Each figure is the median of `--repeat` runs after one warm-up run; goal: a whole run ≤ 200 ms at
4,096 uids.

Run: `uv run python bench/weights.py` (writes bench/results/weights.json). `--quick`: 256 uids,
2 runs (a smoke test of the bench itself).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from horde_weights.scoring import ScoredJob, score_batch
from horde_weights.service_settings import WeightsMode
from horde_weights.weight_commit import U16_MAX, commit_hash, quantize_for_commit, quantize_for_set_weights
from horde_weights.weight_processing import max_weight_limit_from_u16, process_weights, uid_vector
from horde_weights.weights_plan import VERSION_KEY, ChainRules, build_payload, plan_weights

RESULTS_DIR: Final = Path(__file__).parent / "results"
SIZES: Final = (256, 1024, 4096)
JOBS_PER_MINER: Final = 8
SPIN: Final = "spin_up-4min.gpu-24gb"
LLM: Final = "always_on.llm.a6000"
CLASS_WEIGHTS: Final = {SPIN: 85.0, LLM: 15.0}  # DYNAMIC_EXECUTOR_CLASS_WEIGHTS' default
MIN_ALLOWED_WEIGHTS: Final = 8
MAX_WEIGHT: Final = 65535  # DYNAMIC_MAX_WEIGHT's default
NETUID: Final = 12
GOAL_MS: Final = {4096: 200.0}
STAGES: Final = ("score", "process", "set u16", "commit", "run")


@dataclass(frozen=True, slots=True)
class Neuron:
    uid: int
    hotkey: str


@dataclass(frozen=True, slots=True)
class Fixture:
    jobs: list[ScoredJob]
    neurons: list[Neuron]
    max_weight_limit_u16: int = U16_MAX


def fixture(uids: int, seed: int = 12) -> Fixture:
    """`uids` registered miners with `JOBS_PER_MINER` jobs each (6 spin-up, 2 LLM)."""
    rng = random.Random(seed + uids)
    neurons = [Neuron(uid, f"5Hotkey{uid:06d}") for uid in range(uids)]
    jobs: list[ScoredJob] = []
    for n in neurons:
        for k in range(JOBS_PER_MINER):
            failed = rng.random() < 0.10
            jobs.append(
                ScoredJob(
                    miner_hotkey=n.hotkey,
                    executor_class=SPIN if k < 6 else LLM,
                    score=0.0 if failed else rng.uniform(0.5, 1.3),
                    success=not failed,
                    excluded=rng.random() < 0.02,
                )
            )
    return Fixture(jobs, neurons, cap_u16(jobs, neurons))


def cap_u16(jobs: list[ScoredJob], neurons: list[Neuron]) -> int:
    """A MaxWeightsLimit (u16) halfway between the uniform share and the largest uncapped share."""
    vector = uid_vector(score_batch(jobs, CLASS_WEIGHTS), neurons)
    assert vector is not None
    uncapped = process_weights(
        vector.uids, vector.weights, n_neurons=len(neurons), min_allowed_weights=0, max_weight_limit=1.0
    )
    limit = (1 / len(neurons) + max(uncapped.weights)) / 2
    return math.ceil(limit * U16_MAX)


def stages(f: Fixture) -> dict[str, Callable[[], Any]]:
    """Each measured step as a thunk over the fixture; the inputs of a step are computed up front."""
    rules = ChainRules(min_allowed_weights=MIN_ALLOWED_WEIGHTS, max_weight_limit_u16=f.max_weight_limit_u16)
    limit = max_weight_limit_from_u16(f.max_weight_limit_u16)
    scores = score_batch(f.jobs, CLASS_WEIGHTS)
    vector = uid_vector(scores, f.neurons)
    assert vector is not None
    processed = process_weights(
        vector.uids,
        vector.weights,
        n_neurons=len(f.neurons),
        min_allowed_weights=MIN_ALLOWED_WEIGHTS,
        max_weight_limit=limit,
    )
    key, salt = bytes(range(32)), [7] * 8

    def process() -> Any:
        v = uid_vector(scores, f.neurons)
        assert v is not None
        return process_weights(
            v.uids,
            v.weights,
            n_neurons=len(f.neurons),
            min_allowed_weights=MIN_ALLOWED_WEIGHTS,
            max_weight_limit=limit,
        )

    def commit() -> str:
        values = quantize_for_commit(processed.weights, MAX_WEIGHT)
        return commit_hash(key, NETUID, processed.uids, values, salt, VERSION_KEY)

    def run() -> Any:
        planned = plan_weights(f.jobs, CLASS_WEIGHTS, f.neurons, rules)
        assert planned is not None
        return build_payload(
            WeightsMode.COMMIT_REVEAL_V2,
            planned,
            max_weight=MAX_WEIGHT,
            salt=salt,
            public_key=key,
            netuid=NETUID,
        )

    return {
        "score": lambda: score_batch(f.jobs, CLASS_WEIGHTS),
        "process": process,
        "set u16": lambda: quantize_for_set_weights(processed.uids, processed.weights),
        "commit": commit,
        "run": run,
    }


def measure(sizes: tuple[int, ...], repeat: int) -> dict[str, Any]:
    """uids → stage → {median_ms, runs_ms}, plus the payload's size as a sanity figure."""
    results: dict[str, Any] = {}
    for uids in sizes:
        f = fixture(uids)
        per_stage: dict[str, Any] = {}
        for name, thunk in stages(f).items():
            thunk()  # warm-up: first-call costs (imports, caches) are not a run's
            runs = []
            for _ in range(repeat):
                start = time.perf_counter()
                thunk()
                runs.append((time.perf_counter() - start) * 1000)
            per_stage[name] = {"median_ms": round(statistics.median(runs), 3), "runs_ms": runs}
        results[str(uids)] = {
            "jobs": len(f.jobs),
            "max_weight_limit_u16": f.max_weight_limit_u16,
            "stages": per_stage,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=15, help="runs per figure; the median is reported")
    parser.add_argument("--quick", action="store_true", help="256 uids, 2 runs (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "weights.json", help="the JSON file")
    args = parser.parse_args()
    sizes, repeat = ((256,), 2) if args.quick else (SIZES, args.repeat)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    with console.status("measuring weights…"):
        results = measure(sizes, repeat)

    table = Table(title=f"weights run, pure part (ms, median of {repeat} runs, {os.cpu_count()} cores)")
    table.add_column("uids", justify="right")
    table.add_column("jobs", justify="right")
    for name in STAGES:
        table.add_column(name, justify="right")
    table.add_column("goal (run)", justify="right")
    for uids in sizes:
        r = results[str(uids)]
        run_ms = r["stages"]["run"]["median_ms"]
        goal = GOAL_MS.get(uids)
        cells = [f"{r['stages'][s]['median_ms']:.2f}" for s in STAGES]
        if goal is not None:
            cells[-1] = f"[{'green' if run_ms <= goal else 'red'}]{cells[-1]}[/]"
        table.add_row(str(uids), str(r["jobs"]), *cells, f"≤ {goal:g}" if goal is not None else "")
    console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "weights",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "repeat": repeat,
        "jobs_per_miner": JOBS_PER_MINER,
        "min_allowed_weights": MIN_ALLOWED_WEIGHTS,
        "goals_ms": {str(k): v for k, v in GOAL_MS.items()},
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results in {args.out}")


if __name__ == "__main__":
    main()
