"""Write requirements.lock from a `pip install --dry-run --report` of a frozen environment: each package's exact
version and the sha256 of the distribution pip chose (the index publishes it; no package is downloaded).

    python workflow/scripts/lock_env.py REPORT.json > requirements.lock      (`make lock` runs it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """\
# Exact versions of every package of the environment (the project's dependencies and dev tools), with the
# sha256 of the distribution pip installs on Linux x86_64 for CPython 3.11 (`pip install --require-hashes`).
# Used by `make setup` and workflow/envs/uvit.yaml. Refresh after changing pyproject.toml: `make lock`.
"""


def main(report_path: str) -> int:
    report = json.loads(Path(report_path).read_text())
    lines = []
    for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
        meta, digest = item["metadata"], item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{meta['name']}=={meta['version']} \\\n    --hash=sha256:{digest}")
    sys.stdout.write(HEADER + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
