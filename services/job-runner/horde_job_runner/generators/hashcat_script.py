"""The decryption script the validator ships as `raw_script` with hashcat jobs (weights versions 1-4).

The executor mounts it at `/script.py` in the `compute-horde-job:v1-latest` image (which has python,
`cryptography` and hashcat) and runs it with `docker_run_cmd`. The script:

1. loads the pickled job from `/volume/payload.txt`;
2. for each stage, decrypts the stage's hash list (Fernet) when it is encrypted: stage 0 with a key
   derived from `argv[1]` (weights version 4 only), later stages with a key derived from the passwords
   cracked in the previous stage;
3. cracks the stage with hashcat (mask attack, salted hashes, custom charset 1 = `?l?d?u`);
4. prints `urlsafe_b64(sha256(all cracked passwords, stage by stage, each stage sorted))`, the only
   thing written to stdout.

`HORDE_JOB_VOLUME_DIR` overrides `/volume` and `HORDE_HASHCAT` the hashcat binary: both are for local
testing only; real executors never set them.
"""

from __future__ import annotations

_TEMPLATE = """\
import base64
import hashlib
import os
import pickle
import subprocess
import sys

from cryptography.fernet import Fernet

FIRST_STAGE_ENCRYPTED = {first_stage_encrypted}
VOLUME_DIR = os.environ.get("HORDE_JOB_VOLUME_DIR", "/volume")
HASHCAT = os.environ.get("HORDE_HASHCAT", "hashcat")


def derive_key(secret):
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode("utf-8")).digest())


def crack(algorithm, mask, hash_lines):
    with open("_payload.txt", "w", encoding="utf-8") as f:
        f.write(hash_lines)
    cmd = [
        HASHCAT, "--potfile-disable", "--restore-disable", "--attack-mode", "3",
        "--workload-profile", "3", "--optimized-kernel-enable", "--hash-type", str(algorithm),
        "--hex-salt", "-1", "?l?d?u", "--outfile-format", "2", "--quiet", "_payload.txt", mask,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("hashcat exited with %d" % proc.returncode)
    return sorted(line for line in proc.stdout.split("\\n") if line)


def main():
    with open(os.path.join(VOLUME_DIR, "payload.txt"), "rb") as f:
        job = pickle.load(f)
    key = derive_key(sys.argv[1]) if FIRST_STAGE_ENCRYPTED else None
    stages = []
    for i in range(int(job["n"])):
        hash_lines = job["payloads"][i]
        if key is not None:
            hash_lines = Fernet(key).decrypt(hash_lines.encode("ascii")).decode("utf-8")
        passwords = crack(job["algorithms"][i], job["masks"][i], hash_lines)
        stages.append(passwords)
        key = derive_key("\\n".join(passwords))
    digest = hashlib.sha256("".join("".join(p) for p in stages).encode("utf-8")).digest()
    print(base64.urlsafe_b64encode(digest).decode("ascii"))


if __name__ == "__main__":
    main()
"""

V1_SCRIPT = _TEMPLATE.format(first_stage_encrypted="False")
"""Weights versions 1-3: stage 0 is plaintext, run as `["/script.py"]`."""

V2_SCRIPT = _TEMPLATE.format(first_stage_encrypted="True")
"""Weights version 4: stage 0 is encrypted with `argv[1]`, run as `["/script.py", first_password]`."""
