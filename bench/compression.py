"""Does per-message compression of the production job frames earn its CPU? (issue 6, section 5)

Builds real production (weights version 4) `V0InitialJobRequest` frames, 62 KB each, mostly the
base64 of a zip of a pickle of Fernet tokens, i.e. of random bytes, and compresses each as
permessage-deflate would, with the `websockets` extension object and its default client settings
(what the reference negotiated). Prints CPU per frame and the bytes saved. Our transport offers no
compression (`TransportSettings.compression = None`; `tests/test_transport.py` checks the offer).

Run: `uv run python bench/compression.py [--frames 200]`. Writes bench/results/batch-compression.json.
"""

from __future__ import annotations

import argparse
import json
import resource
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "batch-compression.json"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    from websockets.frames import Frame, Opcode

    from horde_common.crypto import sign
    from horde_common.protocol.miner.parsing import dumps
    from horde_common.protocol.miner.validator_messages import V0InitialJobRequest
    from horde_job_runner.synthetic import receipts as rc
    from horde_job_runner.synthetic.generation import build_jobs
    from horde_localnet import keys

    validator, miner = keys.validator_keypair(0), keys.miner_keypair(0).ss58_address
    now = datetime.now(UTC)
    frames: list[bytes] = []
    for gen in build_jobs(miner, [("always_on.gpu-24gb", args.frames)], 4, "production", now):
        payload, signature = rc.started_receipt(
            lambda blob: sign(validator, blob),
            job_uuid=str(gen.job_uuid),
            miner_hotkey=miner,
            validator_hotkey=validator.ss58_address,
            executor_class="always_on.gpu-24gb",  # type: ignore[arg-type]
            max_timeout=gen.timeout_seconds(),
            now=now,
        )
        message = V0InitialJobRequest(
            job_uuid=str(gen.job_uuid),
            executor_class="always_on.gpu-24gb",  # type: ignore[arg-type]
            base_docker_image_name=gen.base_docker_image_name(),
            timeout_seconds=gen.timeout_seconds(),
            volume=gen.initial_request_volume(),  # type: ignore[arg-type]
            job_started_receipt_payload=payload,
            job_started_receipt_signature=signature,
        )
        frames.append(dumps(message).encode())

    # The client side of the extension as websockets negotiates it by default (context takeover on).
    # (`compression="deflate"` in websockets: memLevel 5, zlib's default level), and a server that
    # accepts it without parameters.
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True, compress_settings={"memLevel": 5})
    extension = factory.process_response_params([], [])
    raw = sum(len(f) for f in frames)
    c0 = _cpu()
    sent = 0
    for data in frames:
        frame = extension.encode(Frame(Opcode.TEXT, data))
        sent += len(frame.data)
    deflate_cpu = _cpu() - c0
    c0 = _cpu()
    for data in frames:
        Frame(Opcode.TEXT, data).serialize(mask=True, extensions=[])
    plain_cpu = _cpu() - c0
    out = {
        "frames": len(frames),
        "frame_bytes_mean": round(raw / len(frames)),
        "deflated_bytes_mean": round(sent / len(frames)),
        "saved_fraction": round(1 - sent / raw, 3),
        "deflate_cpu_ms_per_frame": round(deflate_cpu * 1000 / len(frames), 3),
        "uncompressed_frame_cpu_ms_per_frame": round(plain_cpu * 1000 / len(frames), 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
