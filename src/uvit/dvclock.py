"""Keep dvc.lock in step with Snakemake runs without laundering: record only the DVC stages Snakemake ran.

After `snakemake` succeeds (the Snakefile's `onsuccess`), `python -m uvit.dvclock --since <start>` writes the
settings records (`uvit settings`), then walks the DVC stages upstream first and records a stage in dvc.lock
only when DVC finds it changed, every output it declares was made by Snakemake for the current settings, and
every input that another stage produces is that stage's recorded output (DVC's own status of the upstream
stage). Made for the current settings: written by this run (not before it started), or, for the jobs of this
run's DAG that Snakemake found up to date (`--dag-outputs`, on standard input: their settings and code, which their lineage param
carries, are the current ones), written by a job that finished and untouched since (Snakemake's metadata: the
end time it recorded is the output's time). The second case is a run killed after some jobs finished and
before it could record them: the next run records what those jobs made instead of leaving it unrecorded.
Anything else stays unrecorded, so `dvc status` keeps showing it: a metrics file edited by hand is never
recorded, and neither is a table rendered from it. Each stage left unrecorded is named on one line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from base64 import urlsafe_b64encode
from pathlib import Path

# A file written right after the run started may carry a slightly earlier time (coarse filesystem clocks).
CLOCK_SLACK_S = 0.05
SETTINGS_STAGE = "settings"
SNAKEMAKE_METADATA = Path(".snakemake", "metadata")  # Snakemake's record of each output's job, in its workdir


def written_since(path: str, since: float) -> bool:
    try:
        return os.stat(path).st_mtime >= since - CLOCK_SLACK_S
    except OSError:
        return False


def snakemake_record(path: str, root: Path) -> dict | None:
    """Snakemake's metadata record of an output (named by the path's urlsafe base64, cut into pieces of the
    file-name limit with '@' before all but the last, as snakemake.persistence writes it), or None."""
    metadata = root / SNAKEMAKE_METADATA
    try:
        limit = os.pathconf(metadata, "PC_NAME_MAX") or 255
        key = urlsafe_b64encode(path.encode()).decode()
        pieces = [key[i : i + limit - 1] for i in range(0, len(key), limit - 1)]
        record = json.loads(metadata.joinpath(*[f"@{p}" for p in pieces[:-1]], pieces[-1]).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def made_by_a_finished_job(path: str, root: Path) -> bool:
    """A Snakemake job that finished wrote `path`, and nothing has written it since (Snakemake records the job's
    end time as its outputs' time; an edit afterwards makes the file newer)."""
    record = snakemake_record(path, root)
    if record is None or record.get("incomplete", True) or not isinstance(record.get("endtime"), float | int):
        return False
    try:
        return os.stat(root / path).st_mtime <= record["endtime"] + CLOCK_SLACK_S
    except OSError:
        return False


def made_for_current_settings(stage, since: float, dag_outputs: set[str], root: Path) -> bool:
    """Every output the stage declares (persistent ones aside: checkpoints survive runs) was written by this run,
    or each is the output of an up-to-date job of this run's DAG that a finished Snakemake job wrote."""
    outs = [out for out in stage.outs if not out.persist]
    if not outs:
        return False
    if all(written_since(str(out.fs_path), since) for out in outs):
        return True
    paths = [os.path.relpath(out.fs_path, root) for out in outs]
    return all(path in dag_outputs and made_by_a_finished_job(path, root) for path in paths)


def record_runs(
    since: float, root: Path = Path("."), dag_outputs: frozenset[str] = frozenset()
) -> tuple[list[str], list[str], list[str]]:
    """Record the stages this run produced, then drop the entries of stages no longer defined; return (recorded,
    left, dropped) stage names, left with the reason."""
    import networkx as nx
    from dvc.repo import Repo

    recorded, left, unrecorded = [], [], set()
    with Repo(str(root)) as repo, repo.lock:
        graph = repo.index.graph
        for stage in reversed(list(nx.topological_sort(graph))):
            if not stage.cmd:
                continue
            if stage.name != SETTINGS_STAGE and not any(out.exists for out in stage.outs if not out.persist):
                continue  # never made here (a paper row, an experiment not run): nothing to record or name
            if not stage.changed():
                continue
            missing = [str(dep) for dep in stage.deps if not dep.exists]
            dirty = [up for up in graph.successors(stage) if up in unrecorded]
            if missing:  # the quick tier: the tables of every target, some never made here
                reason = f"its input {missing[0]} does not exist (`make demo-full` makes it)"
            elif stage.name != SETTINGS_STAGE and not made_for_current_settings(
                stage, since, dag_outputs, root
            ):
                reason = "its outputs were not written by this run (changed by hand, or by another command)"
            elif dirty:
                reason = f"its input from {dirty[0].addressing} is not what dvc.lock records for that stage"
            else:
                stage.save()
                stage.commit(relink=False)
                recorded.append(stage)
                continue
            unrecorded.add(stage)
            left.append(f"{stage.addressing}: {reason}")
        dump_lock_entries(recorded)
        dropped = prune_lock(root / "dvc.lock", {stage.addressing for stage in graph})
    return [stage.addressing for stage in recorded], left, dropped


def dump_lock_entries(stages: list) -> None:
    """Write the stages' lock entries, one write per lock file: DVC's stage.dump() parses and rewrites the whole
    file (round-trip YAML) for each stage, seconds per stage once dvc.lock holds a few dozen."""
    by_file: dict[str, list] = {}
    for stage in stages:
        by_file.setdefault(stage.dvcfile.path, []).append(stage)
    for group in by_file.values():
        group[0].dvcfile.dump_stages(group, update_pipeline=False)


def prune_lock(path: Path, defined: set[str]) -> list[str]:
    """Drop the dvc.lock entries of stages dvc.yaml no longer defines (renamed, or an evaluation point no longer
    asked for): what they record is nothing a current stage makes. Returns their names."""
    from ruamel.yaml import YAML

    from uvit.config import read_yaml
    from uvit.fileio import atomic_write_bytes

    if not path.is_file():
        return []
    # the names with the project's reader (libyaml); the round trip below is pure Python, ~0.5 s for the demo's lock
    gone = [name for name in read_yaml(path)["stages"] if name not in defined]
    if gone:
        round_trip = YAML()  # the entries kept stay byte for byte as DVC wrote them
        lock = round_trip.load(path.read_text())
        for name in gone:
            del lock["stages"][name]
        out = io.StringIO()
        round_trip.dump(lock, out)
        atomic_write_bytes(path, out.getvalue().encode())
    return gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, required=True, help="when the Snakemake run started (epoch s)")
    parser.add_argument(
        "--dag-outputs",
        action="store_true",
        help="read the outputs of this run's DAG from standard input, one per line",
    )
    args = parser.parse_args(argv)
    from uvit.config import load_params
    from uvit.stages import Lineage, all_jobs

    params = load_params("params.yaml")
    Lineage(params).write_settings(all_jobs(params))
    started = time.time()
    dag_outputs = (
        frozenset(line for line in sys.stdin.read().splitlines() if line) if args.dag_outputs else frozenset()
    )
    recorded, left, gone = record_runs(args.since, dag_outputs=dag_outputs)
    print(
        f"dvc.lock: recorded {len(recorded)} stages this run made ({time.time() - started:.1f} s)"
        + (f"; dropped {len(gone)} entries of stages dvc.yaml no longer defines" if gone else ""),
        file=sys.stderr,
    )
    for line in left:
        print(
            f"dvc.lock: not recorded: {line}; `dvc status` shows it, `snakemake --cores all --forcerun <rule>` "
            "or `dvc repro <stage>` reruns it",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
