"""`python -m horde_localnet.miners`: run a miner fleet until interrupted.

Without arguments the fleet is the one the default localnet metagraph file describes
(`horde_localnet/metagraph.yaml`); flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .behaviours import DEFAULT_RECONNECT_MODE, Behaviour, BehaviourSpec, ReconnectMode


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{what}: expected KEY=VALUE, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def _executors(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in _pairs(text, "--executors")}
    except ValueError:
        raise argparse.ArgumentTypeError("--executors: counts must be integers") from None


def _behaviour(text: str) -> tuple[int, BehaviourSpec]:
    index, sep, spec = text.partition("=")
    if not sep or not index.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--behaviour: expected INDEX=NAME[:DELAY], got {text!r}")
    try:
        return int(index), BehaviourSpec.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m horde_localnet.miners", description=__doc__)
    p.add_argument("--metagraph", help="localnet metagraph YAML (default: the packaged metagraph.yaml)")
    p.add_argument("--count", type=int, help="number of miners (dev keys 0..count-1)")
    p.add_argument("--base-port", type=int, help="miner i listens on base-port + i")
    p.add_argument("--host", help="address to bind (default from the metagraph, 127.0.0.1)")
    p.add_argument(
        "--executors",
        type=_executors,
        help="executors per miner, e.g. spin_up-4min.gpu-24gb=2,always_on.llm.a6000=1",
    )
    p.add_argument(
        "--behaviour",
        type=_behaviour,
        action="append",
        default=[],
        metavar="INDEX=NAME[:DELAY]",
        help=f"per-miner behaviour ({', '.join(b.value for b in Behaviour)}); repeatable",
    )
    p.add_argument(
        "--known-validator",
        action="append",
        default=None,
        metavar="SS58",
        help="accept this validator (repeatable; default: the metagraph's validators)",
    )
    p.add_argument("--any-validator", action="store_true", help="accept every validator")
    p.add_argument("--spin-up-delay", type=float, default=0.0, help="seconds from accept to ready")
    p.add_argument(
        "--executor-wait", type=float, default=None, help="seconds a reservation waits (default 360)"
    )
    p.add_argument("--cpu-workers", type=int, default=0, help="crack in N worker processes (0: threads)")
    p.add_argument(
        "--run-scripts", action="store_true", help="run the validator's raw_script in a subprocess"
    )
    p.add_argument(
        "--reconnect",
        choices=[m.value for m in ReconnectMode],
        default=None,
        help=(
            "what a validator's new connection gets for its unfinished jobs: 'real' (the November 2024"
            " miner) pushes their results as they come, before authentication; 'legacy' waits for the"
            f" re-authentication (default: the metagraph's miners.reconnect, else {DEFAULT_RECONNECT_MODE})"
        ),
    )
    p.add_argument(
        "--trusted-port",
        type=int,
        default=None,
        help="also serve a trusted miner on this port (docs/crossval.md §8): off the chain, only the"
        " --trusted-validator, no miner-hotkey checks",
    )
    p.add_argument(
        "--trusted-validator",
        metavar="SS58",
        default=None,
        help="the one validator the trusted miner serves (default: the metagraph's first validator)",
    )
    p.add_argument(
        "--trusted-executors",
        type=_executors,
        default=None,
        help="the trusted miner's executors (default: always_on.llm.a6000=1)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(fleet: Any, trusted: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if trusted is not None:  # before the fleet: its last port is what a launcher waits for
        await trusted.start()
        validator = next(iter(trusted.config.known_validators))
        print(
            f"trusted miner {trusted.hotkey} ws://{trusted.host}:{trusted.port} for {validator}", flush=True
        )
    try:
        await fleet.start()
    except BaseException:
        if trusted is not None:
            await trusted.stop()
        raise
    for m in fleet.miners:
        print(
            f"miner {m.index} {m.hotkey} ws://{m.host}:{m.port} {m.config.behaviour}"
            f" reconnect={m.config.reconnect}",
            flush=True,
        )
    print(f"{len(fleet.miners)} miners running; Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        await fleet.stop()
        if trusted is not None:
            await trusted.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from horde_localnet.chain_spec import SpecError, load_spec
    from horde_localnet.config import DEFAULT_METAGRAPH_PATH

    from .fleet import MinerFleet

    try:
        spec = load_spec(args.metagraph or DEFAULT_METAGRAPH_PATH)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {
        "spin_up_delay": args.spin_up_delay,
        "executor_wait": args.executor_wait,
        "cpu_workers": args.cpu_workers,
        "run_scripts": args.run_scripts,
    }
    if args.reconnect is not None:
        overrides["reconnect"] = args.reconnect
    if args.count is not None:
        overrides["count"] = args.count
    if args.base_port is not None:
        overrides["base_port"] = args.base_port
    if args.host is not None:
        overrides["host"] = args.host
    if args.executors is not None:
        overrides["executors"] = args.executors
    if args.behaviour:
        base = dict((spec.miners.model_extra or {}).get("behaviours") or {})
        overrides["behaviours"] = {**base, **dict(args.behaviour)}
    if args.any_validator:
        overrides["known_validators"] = None
    elif args.known_validator:
        overrides["known_validators"] = args.known_validator
    try:
        fleet = MinerFleet.from_spec(spec, **overrides)
        trusted = None
        if args.trusted_port is not None:
            from horde_localnet.keys import validator_hotkey

            from .trusted import trusted_miner

            validator = args.trusted_validator or validator_hotkey(spec.validators[0].index)
            host = args.host or spec.miners.host
            trusted = trusted_miner(
                validator, host=host, port=args.trusted_port, executors=args.trusted_executors
            )
    except (ValueError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(fleet, trusted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
