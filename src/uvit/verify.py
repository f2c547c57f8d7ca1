"""`uvit verify`: every number in paper_tables/ traces back to the metrics files, dvc.lock and the artifacts.

Three checks, each stopping at the first failure with the table cell it affects:
1. The tables rebuilt from the metrics files equal the committed Markdown and LaTeX files, cell by cell
   (a number edited by hand, or a table not re-rendered after the metrics changed).
2. Each metrics file behind a row is the one dvc.lock records (a stale metrics file: the pipeline's last
   run produced another one).
3. Each input a metrics file records (checkpoint, samples, reference statistics, floor, dataset) has the
   content hash dvc.lock records for it, and the file present in the workspace, if any, still has that hash
   (a checkpoint changed after its FID was computed). A fresh clone has no artifacts: then only dvc.lock is
   checked, and the report says so.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from uvit.data import read_json
from uvit.provenance import dvc_md5
from uvit.report import Table, build_tables, latex, render, table_metrics_files

TEX_SEPARATOR = re.compile(r"(?<!\\)&")


class TraceError(Exception):
    """A table cell that does not trace back to its metrics file, dvc.lock or artifact."""


@dataclass
class Cell:
    path: Path
    table: Table
    row_index: int
    column: str

    def __str__(self) -> str:
        row = self.table.rows[self.row_index]
        return f"{self.path}: row {self.row_index + 1} ({self.table.label(row)}), column {self.column!r}"


# --------------------------------------------------------------------------------------------------------
# 1. Tables against the metrics files
# --------------------------------------------------------------------------------------------------------


def markdown_rows(text: str) -> list[list[str]]:
    """Cells of the Markdown table in text (header first, the |---| line dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines]
    return [rows[0], *rows[2:]] if len(rows) >= 2 else rows


def latex_rows(text: str) -> list[list[str]]:
    """Cells of the tabular in text (header first), from the \\toprule ... \\bottomrule block."""
    body = text.split("\\toprule", 1)[-1].split("\\bottomrule", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip() and line.strip() != "\\midrule"]
    return [
        [cell.strip() for cell in TEX_SEPARATOR.split(line.removesuffix("\\\\").rstrip())] for line in lines
    ]


def expected_rows(table: Table, ext: str) -> list[list[str]]:
    convert = latex if ext == "tex" else str
    return [[convert(c).strip() for c in table.columns]] + [
        [convert(c).strip() for c in row.cells] for row in table.rows
    ]


def check_table_file(path: Path, table: Table, ext: str, expected_text: str) -> None:
    if not path.is_file():
        raise TraceError(f"{path}: missing; run `snakemake --cores all` (or `uvit tables`) to render it")
    text = path.read_text()
    parse = latex_rows if ext == "tex" else markdown_rows
    found, expected = parse(text), expected_rows(table, ext)
    if found and found[0] != expected[0]:
        raise TraceError(f"{path}: header {found[0]} differs from the table's columns {expected[0]}")
    for i, (have, want) in enumerate(zip(found[1:], expected[1:], strict=False)):
        for column, h, w in zip(table.columns, have, want, strict=False):
            if h != w:
                source = table.rows[i].source or "src/uvit/paper_results.yaml"
                raise TraceError(
                    f"{Cell(path, table, i, column)}: the table says {h!r}, {source} gives {w!r}"
                )
        if len(have) != len(want):
            raise TraceError(
                f"{Cell(path, table, i, table.columns[0])}: {len(have)} cells, expected {len(want)}"
            )
    if len(found) != len(expected):
        raise TraceError(f"{path}: {len(found) - 1} rows, the metrics files give {len(expected) - 1}")
    if text != expected_text:
        pairs = itertools.zip_longest(text.splitlines(), expected_text.splitlines())
        line = next(n for n, (a, b) in enumerate(pairs, 1) if a != b)
        raise TraceError(f"{path}: line {line} differs from the rendered table (text outside the cells)")


# --------------------------------------------------------------------------------------------------------
# 2, 3. Metrics files and their inputs against dvc.lock and the workspace
# --------------------------------------------------------------------------------------------------------


def locked_hashes(lock_path: Path) -> dict[str, str]:
    """path -> md5 of every output (and dependency) dvc.lock records; outputs win."""
    if not lock_path.is_file():
        raise TraceError(
            f"{lock_path}: missing; the tables cannot be traced without the pipeline's lock file"
        )
    lock = yaml.safe_load(lock_path.read_text()) or {}
    hashes: dict[str, str] = {}
    for section in ("deps", "outs"):
        for stage in lock.get("stages", {}).values():
            for entry in stage.get(section, []):
                if "md5" in entry:
                    hashes[entry["path"].rstrip("/")] = entry["md5"]
    return hashes


class Workspace:
    """Content hashes of files present under root, computed once each."""

    def __init__(self, root: Path):
        self.root, self.cache, self.present = root, {}, 0

    def md5(self, path: str) -> str | None:
        if path not in self.cache:
            full = self.root / path
            self.cache[path] = dvc_md5(full) if full.exists() else None
            self.present += self.cache[path] is not None
        return self.cache[path]


def first_cell(tables: list[Table], source: str, root: Path, column: str | None = None) -> Cell:
    """The first Markdown cell whose row comes from `source` (in `column` if given)."""
    for table in tables:
        for i, row in enumerate(table.rows):
            if row.source == source:
                return Cell(root / "paper_tables" / f"{table.name}.md", table, i, column or "Our FID")
    raise TraceError(f"{source}: no table row comes from it")


def recorded_container(path: str, inputs: dict, locked: dict[str, str]) -> bool:
    """Whether path lies in a directory output that dvc.lock records and the same metrics file records too."""
    return any(
        path.startswith(entry["path"].rstrip("/") + "/") and entry["path"].rstrip("/") in locked
        for entry in inputs.values()
    )


def check_provenance(tables: list[Table], metrics: dict[str, dict], root: Path, workspace: Workspace) -> int:
    """Checks 2 and 3; returns the number of input hashes checked."""
    locked = locked_hashes(root / "dvc.lock")
    checked = 0
    for source, m in metrics.items():
        cell = first_cell(tables, source, root)
        if source not in locked:
            raise TraceError(f"{cell}: {source} is not an output recorded in dvc.lock")
        if workspace.md5(source) != locked[source]:
            raise TraceError(
                f"{cell}: {source} is stale: its md5 {workspace.md5(source)} is not the {locked[source]} dvc.lock "
                "records (re-run the pipeline, or restore the file with `dvc checkout`)"
            )
        inputs = m["provenance"]["inputs"]
        for name, entry in inputs.items():
            column = {"checkpoint": "Checkpoint", "samples": "Samples hash"}.get(name)
            cell = first_cell(tables, source, root, column if column in cell.table.columns else None)
            path, recorded = entry["path"].rstrip("/"), entry["md5"]
            if path not in locked and recorded_container(path, inputs, locked):
                pass  # a file inside a directory output (snapshots/): that directory is checked as an input
            elif locked.get(path) != recorded:
                raise TraceError(
                    f"{cell}: {source} was computed from {path} with md5 {recorded}, but dvc.lock records "
                    f"{locked.get(path)} (the {name} changed after this FID; re-run the pipeline)"
                )
            present = workspace.md5(path)
            if present is not None and present != recorded:
                raise TraceError(
                    f"{cell}: {path} in the workspace has md5 {present}, not the {recorded} {source} was "
                    f"computed from (the {name} changed; re-run the pipeline or `dvc checkout {path}`)"
                )
            checked += 1
    return checked


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def verify(params: dict, root: Path = Path(".")) -> str:
    """Run all checks; raise TraceError at the first failure, else return a one-paragraph summary."""
    paths = table_metrics_files(params)
    for path in paths:
        if not (root / path).is_file():
            raise TraceError(f"{path}: missing; the tables need it (run `snakemake --cores all {path}`)")
    metrics = {path: read_json(root / path, f"run `snakemake --cores all {path}` again") for path in paths}
    tables = build_tables(params, metrics)
    cells = 0
    for table in tables:
        for ext, text in render(table).items():
            check_table_file(root / "paper_tables" / f"{table.name}.{ext}", table, ext, text)
        cells += sum(len(r.cells) for r in table.rows) * 2
    workspace = Workspace(root)
    inputs = check_provenance(tables, metrics, root, workspace)
    artifacts = (
        f"{workspace.present} of them present in the workspace and re-hashed"
        if workspace.present > len(metrics)
        else "artifacts not present here (fresh clone?): checked against dvc.lock only"
    )
    return (
        f"verified {len(tables)} tables ({cells} Markdown and LaTeX cells) against {len(metrics)} metrics files, "
        f"and {inputs} recorded input hashes against dvc.lock; {artifacts}"
    )
