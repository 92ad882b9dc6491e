"""What a weights run would write now, without writing anything (`horde debug set-scores --dry-run`).

The same reads and the same pure functions as `weights_run` (`docs/scoring.md` §2.2): the head, the
dynamic config, `select_batch`, the batch's jobs, the newest metagraph snapshot, the chain's weight
rules, `plan_weights` and `build_payload`. No advisory lock, no `weights` row, no system event, no
batch marked scored: a preview an operator may run at any time, beside a running service.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from horde_common.chain.commit_hash import PUBLIC_KEY_LENGTH
from horde_common.dynamic_config import DynamicConfig
from horde_common.service.startup import describe_error
from horde_weights import weights_rows as rows
from horde_weights.batch_selection import select_batch
from horde_weights.scoring import score_batch
from horde_weights.service_settings import WeightsMode
from horde_weights.weight_commit import SALT_LENGTH
from horde_weights.weights_plan import ChainRules, build_payload, plan_weights
from horde_weights.weights_run import RunStatus, WeightsRun
from horde_weights.windows import CommitRevealWindows

__all__ = ["PLANNED", "PreviewRow", "WeightsPreview", "preview_weights"]

# A preview that got as far as a payload; every other outcome is the `RunStatus` a run would stop at.
PLANNED: Final = "planned"


@dataclass(frozen=True, slots=True)
class PreviewRow:
    """One uid of the payload: `score` is its hotkey's batch score (None: not scored in the batch,
    its weight comes from the floor or uniform rules, `docs/weights.md` §3), `value` the u16 sent
    (0 in mode `auto` means the uid is dropped from the extrinsic, §4.2)."""

    uid: int
    hotkey: str
    score: float | None
    weight: float
    value: int


@dataclass(frozen=True, slots=True)
class WeightsPreview:
    """The outcome of a preview: `status` is `PLANNED` or the `RunStatus` a real run would return."""

    status: str
    mode: WeightsMode
    head: int | None = None
    batch_id: int | None = None
    # Older eligible batches a real run would mark scored unused (`docs/scoring.md` §1.5).
    dropped: tuple[int, ...] = ()
    # Statuses of the batch's earlier `weights` rows: a written one makes a real run a no-op.
    existing: tuple[str, ...] = ()
    # Mode `commit-reveal-v2` only: a real run outside the commit window writes nothing.
    in_commit_window: bool | None = None
    rules: ChainRules | None = None
    rows: tuple[PreviewRow, ...] = field(default_factory=tuple)
    detail: str = ""

    @property
    def weight_sum(self) -> float:
        return sum(r.weight for r in self.rows)

    @property
    def value_sum(self) -> int:
        return sum(r.value for r in self.rows)

    def as_json(self) -> dict[str, Any]:
        """The JSON document `horde debug set-scores --json` prints."""
        return {
            "status": self.status,
            "mode": str(self.mode),
            "head": self.head,
            "batch_id": self.batch_id,
            "dropped": list(self.dropped),
            "existing": list(self.existing),
            "in_commit_window": self.in_commit_window,
            "rules": None
            if self.rules is None
            else {
                "min_allowed_weights": self.rules.min_allowed_weights,
                "max_weight_limit_u16": self.rules.max_weight_limit_u16,
            },
            "rows": [
                {"uid": r.uid, "hotkey": r.hotkey, "score": r.score, "weight": r.weight, "value": r.value}
                for r in self.rows
            ],
            "weight_sum": self.weight_sum,
            "value_sum": self.value_sum,
            "detail": self.detail,
        }


def _public_key(keypair: Any) -> bytes:
    """The hotkey's public key, or zeros without one: the hash is not part of a preview, only the
    values (which do not depend on the key) are."""
    return bytes(keypair.public_key) if keypair is not None else bytes(PUBLIC_KEY_LENGTH)


async def preview_weights(run: WeightsRun) -> WeightsPreview:
    """Score the batch a run would pick now and build its payload; chain failures become `NO_CHAIN`."""
    mode = run.mode
    try:
        head = int(await run.read(run.chain.current_block()))
    except Exception as exc:
        return WeightsPreview(str(RunStatus.NO_CHAIN), mode, detail=describe_error(exc))
    async with run.sessions() as session:
        config = await DynamicConfig.load(session)
        selection = select_batch(await rows.unscored_batches(session), current_block=head, now=run.now())
        if selection.to_score is None:
            return WeightsPreview(str(RunStatus.NOTHING_TO_SCORE), mode, head=head)
        batch_id = selection.to_score
        existing = tuple(str(r.status) for r in await rows.batch_weights(session, batch_id))
        jobs = await rows.batch_jobs(session, batch_id)
        neurons = await rows.newest_snapshot(session)
    window = None
    if mode is WeightsMode.COMMIT_REVEAL_V2:
        window = CommitRevealWindows.from_dynamic(config.settings).in_commit_window(head)
    found = WeightsPreview(
        str(RunStatus.NO_SNAPSHOT),
        mode,
        head=head,
        batch_id=batch_id,
        dropped=selection.to_mark_scored,
        existing=existing,
        in_commit_window=window,
    )
    if not neurons:
        return found
    try:
        hp = await run.read(run.chain.hyperparameters(run.netuid))
    except Exception as exc:
        return replace(found, status=str(RunStatus.NO_CHAIN), detail=describe_error(exc))
    rules = ChainRules(min_allowed_weights=hp.min_allowed_weights, max_weight_limit_u16=hp.max_weight_limit)
    class_weights = config.settings.executor_class_weights
    processed = plan_weights(jobs, class_weights, neurons, rules)
    if processed is None:
        return replace(found, status=str(RunStatus.NO_REGISTERED_HOTKEY), rules=rules)
    payload = build_payload(
        mode,
        processed,
        max_weight=config.settings.max_weight,
        salt=[0] * SALT_LENGTH,
        public_key=_public_key(run.keypair),
        netuid=run.netuid,
    )
    scores = score_batch(jobs, class_weights)
    hotkeys = {n.uid: n.hotkey for n in neurons}
    values = dict(zip(payload.chain_uids, payload.chain_values, strict=True))
    preview_rows = tuple(
        PreviewRow(
            uid=uid,
            hotkey=hotkeys.get(uid, ""),
            score=scores.get(hotkeys.get(uid, "")),
            weight=float(weight),
            value=int(values.get(uid, 0)),
        )
        for uid, weight in zip(processed.uids, processed.weights, strict=True)
    )
    return replace(found, status=PLANNED, rules=rules, rows=preview_rows)
