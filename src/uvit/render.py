"""Rendering the tables (`uvit.tables`) with jinja2: one Markdown and one LaTeX template each
(src/uvit/templates/), written to paper_tables/ by `uvit tables`.

A cell's text is Markdown-inline (`code`, **bold**): the Markdown template writes it as it is, the LaTeX one
converts it (`latex`). `uvit verify` renders the same tables and parses both files back cell by cell.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2

from uvit.fileio import atomic_write_bytes
from uvit.tables import Table, build_tables, present_metrics


def latex(text: str) -> str:
    """Markdown-inline cell text -> LaTeX: `code` -> \\texttt, **bold** -> \\textbf, specials escaped."""
    out, parts = [], str(text).split("`")
    for i, part in enumerate(parts):
        part = part.replace("\\", r"\textbackslash{}")
        for char in "_%&#$":
            part = part.replace(char, "\\" + char)
        part = part.replace("↳", r"$\hookrightarrow$")
        bold = part.split("**")
        part = "".join(r"\textbf{" + b + "}" if j % 2 else b for j, b in enumerate(bold))
        out.append(r"\texttt{" + part + "}" if i % 2 else part)
    return "".join(out)


@functools.cache  # one per process: verify and render_tables render every table with it
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("uvit", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["latex"] = latex
    return env


def render(table: Table) -> dict[str, str]:
    """{"md": text, "tex": text} of one table."""
    env = environment()
    return {ext: env.get_template(f"table.{ext}.j2").render(table=table) for ext in ("md", "tex")}


def render_tables(params: dict, metrics_files: list[Path | str], out_dir: Path) -> list[Path]:
    """Write <table>.md and <table>.tex for every table into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in build_tables(params, present_metrics(params, [str(p) for p in metrics_files])):
        for ext, text in render(table).items():
            path = out_dir / f"{table.name}.{ext}"
            atomic_write_bytes(path, text.encode())
            written.append(path)
    return written
