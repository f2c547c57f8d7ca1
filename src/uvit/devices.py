"""GPU jobs side by side: each job claims its own devices before it starts.

Snakemake's `--resources gpu=N` caps how many GPUs the running jobs ask for together, but does not say which
job gets which device. The rules therefore launch GPU jobs as `python -m uvit.devices K --key KEY -- COMMAND`:
it claims K free devices of this machine (an exclusive lock file per device, held until COMMAND exits, also
across exec), shows COMMAND only those (CUDA_VISIBLE_DEVICES), and runs it. Where the scheduler already chose
the devices (SLURM sets CUDA_VISIBLE_DEVICES) it runs COMMAND as it is. No torch import: it starts at once.

Inside a job, `placement` says where this process runs: its rank, the number of processes and its device.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def gpu_count() -> int:
    """NVIDIA GPUs on this machine (nvidia-smi -L), 0 without the driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return (
        sum(line.startswith("GPU ") for line in result.stdout.splitlines()) if result.returncode == 0 else 0
    )


def lock_dir() -> Path:
    return Path(os.environ.get("UVIT_GPU_LOCKS", Path(tempfile.gettempdir()) / "uvit-gpu-locks"))


def try_claim(wanted: int, total: int, locks: Path) -> list[tuple[int, int]] | None:
    """(device, fd) for `wanted` devices locked now, or None (nothing held) if fewer are free."""
    locks.mkdir(parents=True, exist_ok=True)
    held = []
    for device in range(total):
        fd = os.open(locks / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append((device, fd))
        if len(held) == wanted:
            return held
    for _, fd in held:
        os.close(fd)
    return None


def claim(
    wanted: int, total: int, locks: Path, key: str, poll_s: float = 5.0, log=print
) -> list[tuple[int, int]]:
    """Wait until `wanted` devices are free and lock them (another job of this machine may hold some)."""
    if wanted > total:
        raise SystemExit(
            f"error: {key}: this job asks for {wanted} GPU(s) but this machine has {total}; run it where there are "
            f"GPUs (a GPU machine, or --profile profiles/slurm), or set {key}: 0 to run it on the CPU"
        )
    waited = False
    while (held := try_claim(wanted, total, locks)) is None:
        if not waited:
            log(f"waiting for {wanted} free GPU(s) of {total} (locks in {locks})")
            waited = True
        time.sleep(poll_s)
    return held


def placement() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process: from torchrun's environment, or a single process (GPU
    LOCAL_RANK of those visible to it, else the CPU)."""
    import torch  # here only: `python -m uvit.devices` starts without it

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uvit.devices", description=__doc__.splitlines()[0])
    parser.add_argument("gpus", type=int, help="devices the command needs")
    parser.add_argument(
        "--key", default="resources.gpus", help="the params.yaml key that asks (for messages)"
    )
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("no command given: python -m uvit.devices K [--key KEY] -- COMMAND ...")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    env = dict(os.environ)
    if args.gpus > 0 and "CUDA_VISIBLE_DEVICES" not in env:
        held = claim(args.gpus, gpu_count(), lock_dir(), args.key, log=lambda m: print(m, file=sys.stderr))
        for _, fd in held:
            os.set_inheritable(fd, True)  # the locks live as long as the command
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(device) for device, _ in held)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    raise SystemExit(main())
