"""Mutation testing of the core modules against their fast unit tests (mutmut): `make mutation`.

Usage (from the project root; hours on 2 CPU cores for all modules, so not in CI):
    python benchmarks/mutation.py [--modules diffusion training ...] [--max-mutants 60] [--jobs 2]

Each module is mutated in a scratch copy of the project (the work tree is never touched) and each mutant is
run against that module's test files (MODULE_TESTS: its own tests and tests/test_recipe.py) without the slow
end-to-end tests or the ones that start subprocesses (a subprocess imports the unmutated package). mutmut
itself runs only the tests that reach the mutated function. `--max-mutants N` tests an evenly spaced sample
of N of a module's mutants, in source order (recorded in the JSON as `sampled`). Writes
benchmarks/results/mutation.json (per module: mutants, killed, survived, score, the survivors with their
diffs) and prints a table. A survivor is either an equivalent mutant or a missing test: judge each one and
write the verdict into the JSON's `notes` (mutant name -> one line); notes are carried over to later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = (
    "diffusion",
    "model",
    "conditioning",
    "checkpoints",
    "training",
    "sampling",
    "data",
    "autoencoder",
    "fid",
    "evaluation",
)
MODULE_TESTS = {
    "diffusion": ["tests/test_diffusion.py", "tests/test_recipe.py"],
    "model": ["tests/test_model.py", "tests/test_mutation_kills_model.py"],
    # Moved out of training and sampling (issue 15): the tests that reached them there.
    "conditioning": [
        "tests/test_recipe.py",
        "tests/test_text.py",
        "tests/test_mutation_kills_training.py",
        "tests/test_mutation_kills_sampling.py",
    ],
    "checkpoints": ["tests/test_mutation_kills_training.py", "tests/test_mutation_kills_sampling.py"],
    "training": ["tests/test_training.py", "tests/test_recipe.py", "tests/test_mutation_kills_training.py"],
    "sampling": ["tests/test_sampling.py", "tests/test_recipe.py", "tests/test_mutation_kills_sampling.py"],
    "data": ["tests/test_data.py", "tests/test_recipe.py", "tests/test_mutation_kills_data.py"],
    "autoencoder": [
        "tests/test_autoencoder.py",
        "tests/test_recipe.py",
        "tests/test_mutation_kills_autoencoder.py",
    ],
    # test_fid_protocols.py: the bilinear resizes and the weights' pin, which test_fid.py leaves to it.
    "fid": ["tests/test_fid.py", "tests/test_fid_protocols.py", "tests/test_mutation_kills_fid.py"],
    # Before tests/test_mutation_kills_evaluation.py only the CLI and the slow DAG tests reached evaluation.py.
    "evaluation": ["tests/test_recipe.py", "tests/test_mutation_kills_evaluation.py"],
}
# The files mutated for a module, below src/uvit (default `<module>.py`): `data` is the dataset code, split
# into the prepare-data entry, the file helpers, the shard format and the source adapters.
MODULE_FILES = {"data": ["data.py", "fileio.py", "shards.py", "sources/*.py"]}
# torch_compile: fullgraph compilation breaks on mutmut's trampoline (a ContextVar.set), not on the mutant.
PYTEST_ARGS = [
    "-m", "not slow", "-k", "not sigkill and not gloo and not torch_compile", "-p", "no:cacheprovider", "-W", "ignore",
]  # fmt: skip
# mutmut's exit codes (mutmut.stats.status_by_exit_code), grouped.
KILLED, SURVIVED, NO_TESTS, TIMEOUT = {1, 3, 37}, {0}, {5, 33}, {24, -24, 36, 152, 255}
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", ".snakemake", ".dvc", "data", "results", "logs", "metrics", "paper_tables", "mutants",
    ".pytest_cache", "__pycache__", ".ruff_cache",
)  # fmt: skip


def module_files(module: str) -> list[str]:
    return MODULE_FILES.get(module, [f"{module}.py"])


def mutmut_config(module: str) -> str:
    tests = ", ".join(json.dumps(t) for t in MODULE_TESTS[module])
    files = ", ".join(json.dumps(f"src/uvit/{f}") for f in module_files(module))
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src/uvit"]\n'
        f"only_mutate = [{files}]\n"
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        f"pytest_add_cli_args = {json.dumps(PYTEST_ARGS)}\n"
        'also_copy = ["params.yaml", "workflow/"]\n'
        'process_isolation = "forkserver"\n'  # torch is not fork-safe after pytest has run in the parent
        "use_git_change_detection = false\n"
    )


def mutmut(work: Path, *args: str, log) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    command = [sys.executable, "-m", "mutmut", *args]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    log.write(f"$ {' '.join(command)}  (rc {result.returncode})\n{result.stdout}\n{result.stderr}\n")
    return result


def exit_codes(work: Path, module: str) -> dict[str, int | None]:
    """Each mutant's exit code, from mutmut's .meta file beside each mutated file, in file and source order."""
    mutants, codes = work / "mutants" / "src" / "uvit", {}
    for pattern in module_files(module):
        for meta in sorted(mutants.glob(f"{pattern}.meta")):
            codes |= json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def spread(names: list[str], count: int | None) -> list[str]:
    """`count` names evenly spaced over the list (all of them without a cap)."""
    if count is None or count >= len(names):
        return names
    return [names[int(i * len(names) / count)] for i in range(count)]


def run_module(module: str, max_mutants: int | None, jobs: int, scratch: Path) -> dict:
    work = scratch / module
    shutil.copytree(ROOT, work, ignore=COPY_IGNORE)
    with (work / "pyproject.toml").open("a") as f:
        f.write(mutmut_config(module))
    started = time.perf_counter()
    with (scratch / f"{module}.log").open("w") as log:
        # Generate the mutants and the test-to-function map; the name matches no mutant, so nothing runs yet.
        mutmut(work, "run", "--max-children", str(jobs), "no-such-mutant", log=log)
        names = list(exit_codes(work, module))  # in source order
        chosen = spread(names, max_mutants)
        if chosen:
            mutmut(work, "run", "--max-children", str(jobs), *chosen, log=log)
    codes = {name: code for name, code in exit_codes(work, module).items() if name in set(chosen)}
    survivors = sorted(n for n, c in codes.items() if c in SURVIVED)
    diffs = {}
    with (scratch / f"{module}.log").open("a") as log:
        for name in survivors:
            diffs[name] = mutmut(work, "show", name, log=log).stdout.strip()
    killed = sum(c in KILLED for c in codes.values())
    tested = sum(c in KILLED | SURVIVED | TIMEOUT for c in codes.values())
    return {
        "tests": MODULE_TESTS[module],
        "mutants_generated": len(names),
        "mutants": len(chosen),
        "sampled": max_mutants is not None and len(chosen) < len(names),
        "killed": killed,
        "timeout": sum(c in TIMEOUT for c in codes.values()),
        "survived": len(survivors),
        "no_tests": sum(c in NO_TESTS for c in codes.values()),
        "not_checked": sum(c is None for c in codes.values()),
        # Killed (a timeout counts as killed, as mutmut counts it) over the mutants some test reached.
        "score": round((killed + sum(c in TIMEOUT for c in codes.values())) / tested, 4) if tested else None,
        # The same over every sampled mutant: one that no selected test reaches counts as not killed.
        "score_of_sampled": round((killed + sum(c in TIMEOUT for c in codes.values())) / len(chosen), 4)
        if chosen
        else None,
        "seconds": round(time.perf_counter() - started, 1),
        "survivors": diffs,
        "no_tests_mutants": sorted(n for n, c in codes.items() if c in NO_TESTS),
    }


def markdown_table(report: dict) -> str:
    """The JSON as a table: one row per module, then each survivor with its verdict."""
    lines = [
        "# Mutation testing (benchmarks/mutation.py, `make mutation`)",
        "",
        f"{report['tool']}, pytest {' '.join(report['pytest_args'])}; {report['machine']}.",
        "Score: killed over the sampled mutants some selected test reaches; of all: over every sampled mutant;",
        "equivalent: survivors whose note judges them equivalent (no test can tell them apart here), left out of",
        "the last column's denominator (the usual mutation score).",
        "",
        "| module | mutants (total) | sampled | killed | survived | no tests | score | of all | equivalent "
        "| score, equivalents out | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module, r in report["modules"].items():
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        of_all = "-" if r.get("score_of_sampled") is None else f"{r['score_of_sampled']:.2f}"
        killed = r["killed"] + r["timeout"]
        equivalent = sum(report["notes"].get(n, "").startswith("equivalent") for n in r["survivors"])
        reached = killed + r["survived"] - equivalent
        lines.append(
            f"| {module} | {r['mutants_generated']} | {r['mutants']}{' (partial)' if r.get('partial') else ''} | "
            f"{killed} | {r['survived']} | {r['no_tests']} | {score} | {of_all} | {equivalent} | "
            f"{killed / reached if reached else float('nan'):.2f} | {r['seconds']:.0f} |"
        )
    lines += [f"\n{m}: {r['partial']}" for m, r in report["modules"].items() if r.get("partial")]
    lines += ["", "## Survivors", ""]
    for r in report["modules"].values():
        for name in r["survivors"]:
            lines.append(f"- `{name}`: {report['notes'].get(name, 'not judged yet')}")
        for name in r.get("no_tests_mutants", []):
            lines.append(
                f"- `{name}` (no selected test reached it): {report['notes'].get(name, 'not judged yet')}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES)
    parser.add_argument("--max-mutants", type=int, default=None, help="per module: an evenly spaced sample")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (for `mutmut browse`)")
    parser.add_argument(
        "--table", action="store_true", help="only rewrite the .md table from the JSON (notes)"
    )
    args = parser.parse_args()
    if args.table:
        args.out.with_suffix(".md").write_text(markdown_table(json.loads(args.out.read_text())))
        return

    scratch = Path(tempfile.mkdtemp(prefix="uvit-mutation-"))
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    notes = previous.get("notes", {})
    # Modules not run this time keep their last results (each records the run that made it).
    results = {m: r for m, r in previous.get("modules", {}).items() if m in MODULES and m not in args.modules}
    try:
        for module in args.modules:
            print(f"{module}: mutating against {', '.join(MODULE_TESTS[module])} ...", flush=True)
            results[module] = run_module(module, args.max_mutants, args.jobs, scratch) | {
                "run": f"--max-mutants {args.max_mutants} --jobs {args.jobs}, {time.strftime('%Y-%m-%d')}"
            }
            # Merged into the file as it is now (another run may have written other modules meanwhile).
            current = json.loads(args.out.read_text()) if args.out.is_file() else {}
            results = current.get("modules", {}) | {m: results[m] for m in args.modules if m in results}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(current | {"modules": results}, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"scratch copies and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    import mutmut

    current = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = current.get("modules", {}) | {m: results[m] for m in args.modules if m in results}
    results = {m: results[m] for m in MODULES if m in results}
    notes = current.get("notes", {}) | notes
    report = {
        "tool": f"mutmut {mutmut.__version__}" if hasattr(mutmut, "__version__") else "mutmut",
        "pytest_args": PYTEST_ARGS,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "modules": results,
        "notes": {
            name: notes[name]
            for r in results.values()
            for name in [*r["survivors"], *r.get("no_tests_mutants", [])]
            if name in notes
        },
    }
    if "run" in current:
        report["run"] = current["run"]  # free text: how the runs were made (machine load, by whom)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown_table(report)
    args.out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"written {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
