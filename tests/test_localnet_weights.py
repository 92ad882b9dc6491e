"""Acceptance: on `horde localnet up`, a completed batch becomes weights on the localnet chain.

After the first batch completes and its cycle ends, the weights service scores it and writes weights
through the Chain port (`WEIGHTS_MODE=auto`: the localnet chain has commit-reveal on, so it takes a
timelocked commit and records it). The recorded weights must rank the honest miners above the
misbehaving ones, and `horde weights --json` must show the write (docs/scoring.md §1–§2).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness beside this file

from localnet_harness import (
    Localnet,
    completed_batches,
    horde,
    hotkey_of,
    localnet_fixture,  # noqa: F401  (the `localnet` fixture)
    localnets_fixture,  # noqa: F401  (the factory it uses)
    poll,
    sql,
    write_metagraph,
)

from horde_common.chain import LocalChainClient
from horde_localnet.config import DEFAULT_TOPOLOGY
from horde_localnet.keys import validator_hotkey

# The batch as in test_localnet_batch.py; then its 20 s cycle ends and the weights loop (a pass a
# minute, woken early by `batch.completed`) writes within about a minute more.
BATCH_WITHIN_S = 240.0
WEIGHTS_WITHIN_S = 150.0
pytestmark = pytest.mark.timeout(480)

BEHAVIOURS = {1: "wrong_answer", 2: "job_fail", 3: "decline"}
MINERS = 8
WRITTEN = ("set", "committed", "revealed")


def _written(db_url: str) -> list[dict[str, object]] | None:
    rows = sql(
        db_url, "SELECT id, batch_id, status FROM weights WHERE status = ANY($1::text[])", list(WRITTEN)
    )
    return rows or None


def _recorded() -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        client = LocalChainClient(DEFAULT_TOPOLOGY.chain_url)
        try:
            history = await client.weights(
                DEFAULT_TOPOLOGY.netuid, validator_hotkey(DEFAULT_TOPOLOGY.validator_index)
            )
        finally:
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
        return [r.model_dump() for r in history.records]

    return asyncio.run(run())


def test_a_completed_batch_becomes_weights_on_chain(localnet: Localnet, tmp_path: Path) -> None:
    metagraph = write_metagraph(tmp_path / "metagraph.yaml", BEHAVIOURS)
    localnet.env["SCHEDULER_CYCLE_LENGTH"] = "100"
    localnet.up("--metagraph", str(metagraph))
    db_url = localnet.env["DATABASE_URL"]

    poll(lambda: completed_batches(db_url), within=BATCH_WITHIN_S, what="a completed batch")
    (row, *_) = poll(lambda: _written(db_url), within=WEIGHTS_WITHIN_S, what="weights written to the chain")

    records = poll(lambda: _recorded() or None, within=30.0, what="weights recorded by the chain")
    latest = max(records, key=lambda r: int(str(r["block"])))
    by_uid = dict(zip(latest["uids"], latest["weights"], strict=True))  # type: ignore[call-overload]
    uid_of = {
        r["hotkey"]: r["uid"]
        for r in sql(db_url, "SELECT uid, hotkey FROM neurons WHERE block = (SELECT max(block) FROM neurons)")
    }
    honest = [by_uid.get(uid_of[hotkey_of(i)], 0) for i in range(MINERS) if i not in BEHAVIOURS]
    faulty = [by_uid.get(uid_of[hotkey_of(i)], 0) for i in BEHAVIOURS]
    assert min(honest) > max(faulty), (honest, faulty)
    assert all(w > 0 for w in honest)

    listed = horde(["weights", "--json"], localnet.env, tmp_path, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert row["id"] in [w["id"] for w in json.loads(listed.stdout)]
