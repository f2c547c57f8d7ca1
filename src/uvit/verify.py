"""`uvit verify`: every number in paper_tables/ traces back to the metrics files, dvc.lock and the artifacts.

Checks, each stopping at the first failure with the table cell it affects:
1. The tables rebuilt from the metrics files equal the committed Markdown and LaTeX files, cell by cell
   (a number edited by hand, or a table not re-rendered after the metrics changed).
2. Each metrics file (an FID, or a classifier accuracy, whose cells are traced to it) was computed from a clean
   tree (committed code and settings) with the settings params.yaml resolves to now (a setting changed since:
   the number is stale). `auto` precision matches the
   concrete precision a record names: the hardware chooses it, and the record says what ran.
3. Each metrics file behind a row is the one dvc.lock records (one edited by hand, or left from another run).
4. Each input a metrics file records (checkpoint, samples, reference statistics, floor, dataset) has the
   content hash dvc.lock records for it; a file inside a directory output (a snapshot of a kept checkpoint)
   is found in that directory's listing in the DVC cache. Every artifact present in the workspace is
   re-hashed and must still have that hash. A fresh clone has no artifacts: the summary says how many were
   absent and checked against dvc.lock only.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from uvit import layout
from uvit.config import current_settings, settings_differences
from uvit.provenance import dvc_md5
from uvit.render import latex, render
from uvit.tables import Table, build_tables, optional_metrics_files, present_metrics, table_metrics_files

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
                raise TraceError(
                    f"{Cell(path, table, i, column)}: the table says {h!r}, {table.rows[i].origin_of(column)} gives {w!r}"
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
    """Content hashes of the artifacts present under root, computed once each; counts present and absent."""

    def __init__(self, root: Path):
        self.root, self.cache = root, {}

    def md5(self, path: str) -> str | None:
        if path not in self.cache:
            full = self.root / path
            self.cache[path] = dvc_md5(full) if full.exists() else None
        return self.cache[path]

    def counts(self) -> tuple[int, int]:
        present = sum(md5 is not None for md5 in self.cache.values())
        return present, len(self.cache) - present


def listed_md5(root: Path, directory_md5: str, relpath: str) -> str | None:
    """The md5 a directory output's listing in the DVC cache gives a file inside it (None: listing absent)."""
    digest = directory_md5
    listing = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
    if not listing.is_file():
        return None
    try:  # DVC writes the listing as a JSON list of {"md5", "relpath"}
        entries = {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
        raise TraceError(
            f"{listing}: not a DVC directory listing ({err!r}); run `dvc fetch` to restore the cache"
        ) from None
    return entries.get(relpath, "not listed")


def check_settings(params: dict, source: str, m: dict, cell: Cell) -> bool:
    """Check 2; returns whether `auto` precision stood for a recorded concrete one."""
    prov = m["provenance"]
    if prov["dirty"] is not False:
        state = "uncommitted changes" if prov["dirty"] else "no git state"
        raise TraceError(
            f"{cell}: {source} was computed from a dirty tree (commit {str(prov['commit'])[:8]} with {state}); "
            "commit the code and settings, then re-run `snakemake --cores all`"
        )
    current = current_settings(params, m)
    diffs = settings_differences(prov["settings"], current)
    if diffs:
        key, was, now = diffs[0]
        raise TraceError(
            f"{cell}: {source} is stale: computed with {key} = {was!r}, params.yaml now resolves it to {now!r} "
            f"({len(diffs)} setting(s) differ); re-run `snakemake --cores all` (or `dvc repro`)"
        )
    return prov["settings"] != current


def first_cell(tables: list[Table], source: str, root: Path, column: str | None = None) -> Cell:
    """The first Markdown cell whose numbers come from `source` (in `column` if given): in a row of that record,
    else the first cell another row takes from it (a classifier accuracy beside its FID)."""
    for table in tables:
        for i, row in enumerate(table.rows):
            if row.source == source:
                return Cell(root / layout.table(table.name, "md"), table, i, column or table.main_column)
    for table in tables:
        for i, row in enumerate(table.rows):
            taken = [c for c, s in row.cell_sources.items() if s == source]
            if taken:
                return Cell(root / layout.table(table.name, "md"), table, i, column or taken[0])
    raise TraceError(f"{source}: no table row comes from it")


def container(path: str, inputs: dict, locked: dict[str, str]) -> str | None:
    """The directory output recorded in dvc.lock (and by the same metrics file) that path lies in."""
    for entry in inputs.values():
        directory = entry["path"].rstrip("/")
        if path.startswith(directory + "/") and directory in locked:
            return directory
    return None


def check_input(root: Path, locked: dict, source: str, name: str, entry: dict, inputs: dict, cell) -> str:
    """One recorded input against dvc.lock; returns how: "lock", "listing" (a file in a directory output,
    found in its cached listing) or "no listing" (that listing is not in the local DVC cache)."""
    path, recorded = entry["path"].rstrip("/"), entry["md5"]
    directory = None if path in locked else container(path, inputs, locked)
    if directory is None:
        if locked.get(path) != recorded:
            raise TraceError(
                f"{cell}: {source} was computed from {path} with md5 {recorded}, but dvc.lock records "
                f"{locked.get(path)} (the {name} changed after this FID; re-run the pipeline)"
            )
        return "lock"
    listed = listed_md5(root, locked[directory], path[len(directory) + 1 :])
    if listed is not None and listed != recorded:
        raise TraceError(
            f"{cell}: {source} was computed from {path} with md5 {recorded}, but the listing of {directory} "
            f"that dvc.lock records gives {listed} (re-run the pipeline)"
        )
    return "listing" if listed is not None else "no listing"


def check_provenance(
    params: dict, tables: list[Table], metrics: dict[str, dict], root: Path, ws: Workspace
) -> dict:
    """Checks 2, 3 and 4; returns counts of what was checked."""
    locked = locked_hashes(root / "dvc.lock")
    counts = {"inputs": 0, "listing": 0, "no listing": 0, "lock": 0, "auto": 0}
    for source, m in metrics.items():
        cell = first_cell(tables, source, root)
        counts["auto"] += check_settings(params, source, m, cell)
        if source not in locked:
            raise TraceError(f"{cell}: {source} is not an output recorded in dvc.lock")
        if ws.md5(source) != locked[source]:
            raise TraceError(
                f"{cell}: {source} is stale: its md5 {ws.md5(source)} is not the {locked[source]} dvc.lock "
                "records (re-run the pipeline, or restore the file with `dvc checkout`)"
            )
        inputs = m["provenance"]["inputs"]
        for name, entry in inputs.items():
            column = {"checkpoint": "Checkpoint", "samples": "Samples hash"}.get(name)
            cell = first_cell(tables, source, root, column if column in cell.table.columns else None)
            counts[check_input(root, locked, source, name, entry, inputs, cell)] += 1
            path, recorded = entry["path"].rstrip("/"), entry["md5"]
            present = ws.md5(path)
            if present is not None and present != recorded:
                raise TraceError(
                    f"{cell}: {path} in the workspace has md5 {present}, not the {recorded} {source} was "
                    f"computed from (the {name} changed; re-run the pipeline or `dvc checkout {path}`)"
                )
            counts["inputs"] += 1
    return counts


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def verify(params: dict, root: Path = Path(".")) -> str:
    """Run all checks; raise TraceError at the first failure, else return a one-paragraph summary."""
    optional, every = optional_metrics_files(params), table_metrics_files(params)
    required = [path for path in every if path not in optional]
    for path in required:
        if not (root / path).is_file():
            raise TraceError(f"{path}: missing; the tables need it (run `snakemake --cores all {path}`)")
    metrics = present_metrics(params, required, root)  # optional ones: present and current, else 'not run'
    not_run = len(every) - len(metrics)
    tables = build_tables(params, metrics)
    cells = 0
    for table in tables:
        for ext, text in render(table).items():
            check_table_file(root / layout.table(table.name, ext), table, ext, text)
        cells += sum(len(r.cells) for r in table.rows) * 2
    workspace = Workspace(root)
    counts = check_provenance(params, tables, metrics, root, workspace)
    present, absent = workspace.counts()
    artifacts = len(workspace.cache) - len(metrics)
    auto = (
        f" ({counts['auto']} accepted where params.yaml now says auto precision and the record names the one"
        " that ran, or adds settings the record predates: fid_protocol clean, the only one then; other metrics"
        " shown as '-')"
        if counts["auto"]
        else ""
    )
    return (
        f"verified {len(tables)} tables ({cells} Markdown and LaTeX cells) against {len(metrics)} metrics files "
        f"(each from a clean tree with the settings params.yaml resolves to now{auto}, each the output dvc.lock "
        f"records), and {counts['inputs']} recorded inputs against dvc.lock ({counts['lock']} as outputs it records, "
        f"{counts['listing'] + counts['no listing']} as files inside a directory output it records: "
        f"{counts['listing']} found in the directory's listing, {counts['no listing']} whose listing is not in "
        f"the local DVC cache); of {artifacts} "
        f"artifacts, {present - len(metrics)} present here and re-hashed, {absent} absent (checked against "
        f"dvc.lock only); {not_run} metrics files of ablation runs or of the full demo tier absent or computed with other settings, shown as 'not run'"
    )
