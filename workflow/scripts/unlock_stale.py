"""Remove Snakemake's lock left by a run that was killed (SIGKILL, OOM killer, a closed laptop): Snakemake keeps
its lock files then and the next `make demo` stops with "Directory cannot be locked". The lock is released only
when no Snakemake process is running in this directory; a live run keeps it.

    python workflow/scripts/unlock_stale.py    # `make demo` and `make demo-full` run it first
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LOCKS = Path(".snakemake/locks")


def snakemake_running_here(root: Path) -> bool:
    """Whether a process whose command line runs snakemake has this directory as its working directory."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:  # gone, or not ours to read
            continue
        if cwd == root and any(Path(part.decode(errors="replace")).name == "snakemake" for part in command):
            return True
    return False


def main() -> int:
    if not any(LOCKS.glob("*.lock")) or snakemake_running_here(Path.cwd().resolve()):
        return 0
    print(f"{LOCKS}: a killed run left its lock and no Snakemake runs here; unlocking", file=sys.stderr)
    return subprocess.run(["snakemake", "--unlock", "--cores", "1"], capture_output=True).returncode


if __name__ == "__main__":
    raise SystemExit(main())
