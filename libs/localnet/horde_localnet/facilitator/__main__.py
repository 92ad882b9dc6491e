"""`python -m horde_localnet.facilitator`: run the facilitator simulator until interrupted.

Validators connect to `ws://HOST:PORT/ws/v0/`; jobs come from `POST /jobs`, from `--jobs-file`
(JSONL, one job spec a line, paced by `--rate` if given) or, with `--rate` alone, from a template
built of the job flags. V2 jobs are signed by the localnet facilitator dev key unless `--signer-uri`
says otherwise; the validator must list that key's hotkey in `FACILITATOR_V2_SIGNERS`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import JobSpec

DEFAULT_PORT = 9300  # `Topology.facilitator_port`


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m horde_localnet.facilitator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--rate", type=_positive, help="jobs a second (template jobs, or pacing --jobs-file)")
    p.add_argument("--jobs-file", help="JSONL file of job specs, submitted at start-up")
    p.add_argument("--count", type=int, help="stop the template feed after this many jobs")
    p.add_argument(
        "--allowed-validator",
        action="append",
        default=None,
        metavar="SS58",
        help="accept only this validator hotkey (repeatable; default: any validator that signs right)",
    )
    p.add_argument(
        "--drop-when-disconnected",
        action="store_true",
        help="drop jobs submitted while no validator is connected (default: hold them until one is)",
    )
    p.add_argument("--signer-uri", help="key URI signing V2 jobs (default: the localnet facilitator key)")
    job = p.add_argument_group("template job (with --rate and no --jobs-file)")
    job.add_argument("--version", choices=("V0", "V1", "V2"), default="V2")
    job.add_argument("--executor-class", default="spin_up-4min.gpu-24gb")
    job.add_argument("--miner-hotkey", help="V0/V1 miner (default: localnet dev miner 0)")
    job.add_argument("--docker-image", default=None)
    job.add_argument(
        "--arg", action="append", dest="args", default=None, help="container argument, repeatable"
    )
    return p


def _template(args: argparse.Namespace) -> JobSpec:
    from horde_localnet import keys

    from .jobs import JobSpec  # lazy: the CLI's --help needs no pydantic

    fields: dict[str, Any] = {"version": args.version, "executor_class": args.executor_class}
    if args.version != "V2":
        fields["miner_hotkey"] = args.miner_hotkey or keys.miner_hotkey(0)
    if args.docker_image is not None:
        fields["docker_image"] = args.docker_image
    if args.args is not None:
        fields["args"] = args.args
    return JobSpec.model_validate(fields)


async def _run(args: argparse.Namespace) -> None:
    from horde_localnet import keys

    from .jobs import read_jobs_file
    from .server import running_facilitator

    jobs: Iterable[JobSpec] | None = None
    if args.jobs_file:
        jobs = read_jobs_file(args.jobs_file)
    elif args.rate:
        template = _template(args)
        specs = (template.model_copy() for _ in itertools.count())
        jobs = specs if args.count is None else itertools.islice(specs, args.count)
    signer = keys.keypair_from_uri(args.signer_uri) if args.signer_uri else keys.facilitator_keypair()
    async with running_facilitator(
        host=args.host,
        port=args.port,
        signer=signer,
        allowed_validators=args.allowed_validator,
        hold_when_disconnected=not args.drop_when_disconnected,
        jobs=jobs,
        rate=args.rate,
    ) as running:
        logging.getLogger(__name__).info(
            "localnet facilitator: validators at %s, HTTP API at %s, V2 signer %s",
            running.ws_url,
            running.url,
            signer.ss58_address,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # end quietly, after closing the server
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    from horde_localnet.chain_spec import SpecError  # what a port already in use raises

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except (ValueError, OSError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
