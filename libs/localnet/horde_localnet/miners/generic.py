"""Any other job on the simulated executors: described, never executed (docs/organic.md §9).

The simulator runs real work only for the images it can stand in for: hashcat (`solver`) and the
two LLM images (`llm_jobs`). Anything else, such as the `python -c print(1)` jobs of
`horde localnet submit-job`, would need docker and the job's image; running its command on the host
instead would execute whatever a facilitator sent. So such a job "completes" with exit status 0
and a deterministic stdout that says what a real executor would have run and what the simulator
left out:

    simulated: <image> <args, shell-quoted>
    raw_script: <n> bytes, not run                  (when the job has one)
    volume: inline, <n> file(s), not mounted        (or `<type>, not fetched` for remote volumes)
    output_upload: <type>, skipped (nothing produced)

An inline volume is still unpacked, as a real executor would, so a broken one fails the job;
remote volumes are not downloaded and nothing is uploaded (an upload of made-up output would lie
to whoever reads it). Pure functions over the job's plain values, no I/O.
"""

from __future__ import annotations

import os.path
import shlex
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["HASHCAT_TYPE_OPTIONS", "describe_generic_job", "is_hashcat_command", "is_script_job"]

HASHCAT_TYPE_OPTIONS = ("--hash-type", "-m")
"""How a hashcat command line names its hash mode; the simulator's hashcat needs one of them."""


def is_hashcat_command(cmd: Sequence[str]) -> bool:
    """A hashcat command line: arguments for an image whose entrypoint is hashcat (they start with
    an option) or a `hashcat ...` command, naming a hash mode. `python -m x` is not one."""
    if not cmd or not any(option in cmd for option in HASHCAT_TYPE_OPTIONS):
        return False
    return cmd[0].startswith("-") or os.path.basename(cmd[0]) == "hashcat"


def is_script_job(raw_script: str | None, cmd: Sequence[str]) -> bool:
    """The validator's hashcat decryption script (weights versions 1-4): `/script.py [password]`."""
    return raw_script is not None and bool(cmd) and cmd[0] == "/script.py"


def describe_generic_job(job: dict[str, Any], unpack: Callable[[dict[str, Any]], dict[str, bytes]]) -> str:
    """The stdout of a job the simulator does not run (format in the module docstring). `unpack`
    opens an inline volume (`solver.unpack_volume`); its `JobError` fails the job."""
    image = str(job.get("docker_image_name") or "")
    cmd = [str(part) for part in job.get("docker_run_cmd") or []]
    lines = [f"simulated: {shlex.join([image, *cmd]) if image else shlex.join(cmd)}".rstrip()]
    script = job.get("raw_script")
    if script is not None:
        lines.append(f"raw_script: {len(script.encode('utf-8'))} bytes, not run")
    volume = job.get("volume")
    if volume is not None:
        lines.append(_describe_volume(volume, unpack))
    upload = job.get("output_upload")
    if upload is not None:
        kind = upload.get("output_upload_type", "unknown") if isinstance(upload, dict) else "unknown"
        lines.append(f"output_upload: {kind}, skipped (nothing produced)")
    return "\n".join(lines) + "\n"


def _describe_volume(volume: dict[str, Any], unpack: Callable[[dict[str, Any]], dict[str, bytes]]) -> str:
    kind = volume.get("volume_type", "unknown")
    if kind == "inline":
        return f"volume: inline, {len(unpack(volume))} file(s), not mounted"
    return f"volume: {kind}, not fetched"
