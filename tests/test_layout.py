"""uvit.layout owns every path: no other module, rule or script writes one, and each function gives the same path
whether called with names or with the placeholders a Snakemake rule or DVC template fills in later."""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize

import pytest
from conftest import ROOT

from uvit import layout

# The start of a path under one of the pipeline's folders, not preceded by another path character.
PATH = re.compile(
    r"(?<![\w./-])(data/(prepared|text|latents|external)|results/|metrics/|paper_tables/?|settings/)"
)


def prose(text: str) -> bool:
    """A sentence (a subcommand's description) may name a folder; a command or a path is not a sentence."""
    return text[:1].isupper() and text.rstrip().endswith(".")


def python_strings(source: str):
    """(line, text) of each string constant outside docstrings and argparse help texts."""
    tree = ast.parse(source)
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skipped.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.keyword) and node.arg in ("help", "description"):
            skipped |= {id(n) for n in ast.walk(node.value)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            yield node.lineno, node.value


def snakemake_strings(source: str):
    """(line, text) of each string token of a rule file (Snakemake's syntax tokenizes as Python), docstrings
    left out."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and not token.string.startswith(('"""', "'''")):
            yield token.start[0], token.string


def written_paths() -> list[str]:
    files = [*ROOT.glob("src/uvit/**/*.py"), *ROOT.glob("workflow/scripts/*.py")]
    found = []
    for path in sorted(files):
        if path.name == "layout.py":
            continue
        for line, text in python_strings(path.read_text()):
            if PATH.search(text) and not prose(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    for path in sorted([ROOT / "Snakefile", *ROOT.glob("workflow/rules/*.smk")]):
        for line, text in snakemake_strings(path.read_text()):
            if PATH.search(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    return found


def test_no_module_rule_or_script_writes_a_path_of_its_own():
    assert written_paths() == []


def test_the_scan_finds_a_path_written_in_a_rule_a_module_or_a_command():
    rule = 'rule x:\n    output:\n        "results/{experiment}/nnet_ema.pth",\n'
    assert [line for line, text in snakemake_strings(rule) if PATH.search(text)] == [3]
    module = (
        'def f(name):\n    """Reads metrics/<name>."""\n    return f"uvit tables --out-dir paper_tables"\n'
    )
    assert [line for line, text in python_strings(module) if PATH.search(text) and not prose(text)] == [3]
    assert not PATH.search("../report/results.rst") and not PATH.search("logs/fid/{experiment}.log")


NAMED = [
    (name, fn)
    for name, fn in inspect.getmembers(layout, inspect.isfunction)
    if fn.__module__ == layout.__name__
    and all(p.annotation in ("str", "str | None") for p in inspect.signature(fn).parameters.values())
]


@pytest.mark.parametrize("name, fn", NAMED, ids=[name for name, _ in NAMED])
def test_a_pattern_filled_in_is_the_path_of_those_names(name, fn):
    """What Snakemake does with a rule's pattern, and DVC with a template's: the same path as called with names."""
    params = list(inspect.signature(fn).parameters)
    values = {p: f"value{i}" for i, p in enumerate(params)}
    if name == "guidance_metrics":
        values["kind"] = "accuracy"
    if name == "curve_data":
        values["x_key"] = "training_steps"
    fixed = {p: v for p, v in values.items() if p in ("kind", "x_key")}
    pattern = fn(**{p: "{" + p + "}" for p in params if p not in fixed}, **fixed)
    assert pattern.format(**values) == fn(**values)


def test_run_folder_members_are_the_names_training_writes(tmp_path):
    """The rule's outputs (layout.checkpoint & co.) are where `uvit train --out results/<experiment>` writes."""
    run = layout.run_dir("exp")
    assert layout.checkpoint("exp") == f"{run}/{layout.EMA_WEIGHTS}"
    assert layout.snapshot("exp", 300) == f"{run}/{layout.SNAPSHOTS}/nnet_ema-0000300.pth"
    from uvit.training import snapshot_path

    assert str(snapshot_path(tmp_path / run, 300)) == str(tmp_path / layout.snapshot("exp", 300))
