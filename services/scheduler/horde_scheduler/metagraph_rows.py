"""Pure part of the metagraph sync: check what the chain sent and turn it into `neurons` rows.

No I/O here, so every rule is a unit test. The rules and their reasons are in
`docs/scheduling.md` §6 (Metagraph sync); in short:

- facts the chain itself guarantees (netuid, block, uid range and uniqueness, SS58 hotkeys, stake
  a finite non-negative number, a bounded neuron count) are checked on the whole snapshot: one
  violation means the node or the adapter is broken, so the snapshot is refused and the previous
  one stays in force;
- the axon (ip, port) is written by each miner for itself: a bad one only makes that neuron
  "not serving" in the stored row, so one miner cannot stop the validator from syncing.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import bittensor_core

from horde_common.chain import NOT_SERVING_IP, Metagraph, Neuron

# Subnet 12 has 256 uids. The bound is 4x that so a governance change of the subnet's maximum does
# not stop the validator, while an answer for the wrong subnet, a corrupted list or a hostile node
# (thousands of entries) is refused before it costs memory, a big insert and a bad weights vector.
MAX_NEURONS = 1024
# Stakes are whole TAO/alpha units. The total supply is 21 million, so anything above 1e9 is a unit
# mix-up (rao sent as TAO: a 1-TAO stake is 1e9 rao) or garbage, and would skew the validator list.
MAX_STAKE = 1e9
# The width of the `neurons.hotkey`/`coldkey` columns; an SS58 address is 47-48 characters.
KEY_COLUMN_WIDTH = 64
# How many problems one refusal message lists: enough to diagnose, never a wall of text.
MAX_PROBLEMS_SHOWN = 5
IPV4 = 4
IPV6 = 6


class MetagraphRefused(ValueError):
    """The chain's answer breaks a rule the chain itself guarantees; nothing of it is stored."""

    def __init__(self, problems: list[str]) -> None:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f" (+{len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        super().__init__(shown + more)
        self.problems = problems


@dataclass(frozen=True)
class NeuronRow:
    """The values of one `neurons` row (see `horde_common.db.models.chain.Neuron`)."""

    block: int
    uid: int
    hotkey: str
    coldkey: str
    stake: float
    validator_permit: bool
    axon_ip: str
    axon_ip_type: int
    axon_port: int
    is_serving: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Snapshot:
    """A checked metagraph ready to store; `unserved` lists the uids whose bad axon was dropped."""

    netuid: int
    block: int
    rows: tuple[NeuronRow, ...]
    unserved: tuple[int, ...] = ()

    @property
    def serving(self) -> int:
        return sum(1 for r in self.rows if r.is_serving)


def is_ss58(address: object) -> bool:
    """A well-formed SS58 address (checksum included) that fits the key columns."""
    if not isinstance(address, str) or not address or len(address) > KEY_COLUMN_WIDTH:
        return False
    try:
        bittensor_core.ss58_decode(address)
    except (ValueError, TypeError):
        return False
    return True


def axon_of(ip: object, port: object) -> tuple[str, int, int, bool] | None:
    """`(ip, ip_type, port, is_serving)` of an axon, or None when it cannot be dialled.

    `0.0.0.0` is the chain's "not serving" (the reference tests `ip != "0.0.0.0"`) and is kept with
    its port as the chain has it. A serving axon needs a parseable, specified address and a port in
    1..65535. Private and loopback addresses are accepted: localnet miners live on 127.0.0.1, and
    the reference dials whatever the chain holds.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        return None
    if ip == NOT_SERVING_IP:
        return NOT_SERVING_IP, IPV4, port, False
    if not isinstance(ip, str):
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.is_unspecified or port == 0:
        return None
    return str(address), address.version, port, True


def _stake_problem(uid: object, stake: object) -> str | None:
    if isinstance(stake, bool) or not isinstance(stake, int | float):
        return f"uid {uid}: stake is not a number"
    if not math.isfinite(stake) or stake < 0:
        return f"uid {uid}: stake {stake!r} is negative or not finite"
    if stake > MAX_STAKE:
        return f"uid {uid}: stake {stake:g} is above {MAX_STAKE:g}"
    return None


def neuron_problems(n: Neuron, max_neurons: int) -> list[str]:
    """What is wrong with one neuron's chain-guaranteed fields (empty when nothing)."""
    problems: list[str] = []
    uid = n.uid
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < max_neurons:
        problems.append(f"uid {uid!r} is outside 0..{max_neurons - 1}")
    if not is_ss58(n.hotkey):
        problems.append(f"uid {uid}: hotkey is not an SS58 address")
    if n.coldkey and not is_ss58(n.coldkey):
        problems.append(f"uid {uid}: coldkey is not an SS58 address")
    stake = _stake_problem(uid, n.stake)
    if stake:
        problems.append(stake)
    return problems


def _duplicates(values: Iterable[object]) -> list[object]:
    seen: set[object] = set()
    dup: list[object] = []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


def metagraph_problems(
    mg: Metagraph, *, netuid: int, block: int, max_neurons: int = MAX_NEURONS
) -> list[str]:
    """Every reason to refuse `mg` as the snapshot of subnet `netuid` at `block` (empty: accept)."""
    problems: list[str] = []
    if mg.netuid != netuid:
        problems.append(f"asked for subnet {netuid}, got subnet {mg.netuid}")
    if mg.block != block:
        problems.append(f"asked for block {block}, got block {mg.block}")
    count = len(mg.neurons)
    if count == 0:
        # A subnet always has its owner's uid; an empty answer means a broken node, and an empty
        # snapshot could not be told apart from "no snapshot at this block".
        problems.append("no neurons")
    if count > max_neurons:
        # Do not inspect thousands of rows: the count alone refuses the answer.
        return [*problems, f"{count} neurons, more than the bound of {max_neurons}"]
    for uid in _duplicates(n.uid for n in mg.neurons):
        problems.append(f"uid {uid} appears more than once")
    for hotkey in _duplicates(n.hotkey for n in mg.neurons):
        problems.append(f"hotkey {str(hotkey)[:KEY_COLUMN_WIDTH]!r} appears more than once")
    for n in mg.neurons:
        problems.extend(neuron_problems(n, max_neurons))
    return problems


def snapshot_rows(mg: Metagraph, *, netuid: int, block: int, max_neurons: int = MAX_NEURONS) -> Snapshot:
    """Check `mg` and convert it to rows ordered by uid; raises `MetagraphRefused` on a bad answer.

    A neuron whose axon cannot be dialled is stored as not serving (ip `0.0.0.0`, port 0) and its
    uid is listed in `Snapshot.unserved`.
    """
    problems = metagraph_problems(mg, netuid=netuid, block=block, max_neurons=max_neurons)
    if problems:
        raise MetagraphRefused(problems)
    rows: list[NeuronRow] = []
    unserved: list[int] = []
    for n in sorted(mg.neurons, key=lambda n: n.uid):
        axon = axon_of(n.axon_ip, n.axon_port)
        if axon is None:
            unserved.append(n.uid)
            axon = (NOT_SERVING_IP, IPV4, 0, False)
        ip, ip_type, port, serving = axon
        rows.append(
            NeuronRow(
                block=block,
                uid=n.uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey or "",
                stake=float(n.stake),
                validator_permit=bool(n.validator_permit),
                axon_ip=ip,
                axon_ip_type=ip_type,
                axon_port=port,
                is_serving=serving,
            )
        )
    return Snapshot(netuid=netuid, block=block, rows=tuple(rows), unserved=tuple(unserved))


def sync_target_block(head: int, every_blocks: int) -> int:
    """The block to snapshot when the head is `head`: the last multiple of `every_blocks`.

    Every scheduler replica computes the same block from the same head, so two of them ask for,
    and try to store, the same snapshot (stored once) instead of two snapshots a block apart.
    """
    if every_blocks < 1:
        raise ValueError("every_blocks must be at least 1")
    return head - head % every_blocks
