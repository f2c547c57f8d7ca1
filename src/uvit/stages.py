"""The pipeline's stages as data (torch-free): the `uvit` subcommand each Snakemake rule runs, the uvit modules
behind it, and each job's lineage, the settings and code of the job and of every job upstream of it.

A rule's params carry its lineage hash, so Snakemake reruns a job whenever anything it depends on changes,
a setting (written or defaulted) or a source file, even when the intermediate outputs in between are gone
(a killed run): an output of older settings is never reported as up to date. dvc.yaml lists the same modules
as code deps (workflow/scripts/export_dvc.py).

`Lineage.settings` is the one record of what a job reads (defaults and zoo entries merged, nothing implicit):
Snakemake rules carry it as their `settings` param, and `uvit settings` (the first DVC stage) writes it to
settings/<rule>/<key>.json, a dependency of the same DVC stage, so both engines rerun exactly the jobs whose
settings changed. `dag_jobs` walks the same lineage to list the jobs, from which dvc.yaml is generated.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
from pathlib import Path

from uvit.config import (
    accuracy_settings,
    caption_split,
    encodes_flips,
    evaluation_point,
    resolve_experiment,
    stage_settings,
    text_tokens,
)
from uvit.errors import UserError
from uvit.layout import SETTINGS_DIR, reference_name, settings_record

PACKAGE = Path(__file__).resolve().parent

# The CLI is the table of stages: `uvit.cli.build_parser` registers each subcommand with its function
# (`stage("train", cmd_train, ...)`), and that function's imports (its own and those of the cli helpers it calls)
# are the subcommand's entry modules, read here from its source so that the two cannot disagree.
CLI = PACKAGE / "cli.py"


@functools.cache
def cli_source() -> ast.Module:
    return ast.parse(CLI.read_text())


@functools.cache
def cli_functions() -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in cli_source().body if isinstance(node, ast.FunctionDef)}


@functools.cache
def cli_commands() -> dict[str, str]:
    """{subcommand: name of the cli function that runs it} (uvit.cli.stage_functions, the table of stages)."""
    from uvit.cli import stage_functions

    return {name: function.__name__ for name, function in stage_functions().items()}


def imported_modules(nodes) -> set[str]:
    """The uvit modules `from uvit.x import ...` / `from uvit import x` statements among `nodes` name."""
    modules = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module == "uvit":
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("uvit."):
            modules.add(node.module.removeprefix("uvit."))
    return modules


@functools.cache
def entry_modules(command: str) -> tuple[str, ...]:
    """The uvit modules a subcommand imports: the CLI's own (module level) and its function's, with those of
    every cli function it calls."""
    functions = cli_functions()
    modules = imported_modules(cli_source().body)
    seen, todo = set(), [cli_commands()[command]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        nodes = list(ast.walk(functions[name]))
        modules |= imported_modules(nodes)
        todo += [n.id for n in nodes if isinstance(n, ast.Name) and n.id in functions]
    return tuple(sorted(modules))


# The package data each module reads; a subcommand depends on that of every module it runs.
PACKAGE_DATA: dict[str, list[str]] = {"tables": ["paper_results.yaml"], "render": ["templates"]}

# The subcommand each Snakemake rule runs.
RULE_COMMANDS: dict[str, str] = {
    "prepare_data": "prepare-data",
    "import_autoencoder": "import",
    "import_reference": "import",
    "import_weights": "import",
    "encode_text": "encode-text",
    "train_autoencoder": "train-autoencoder",
    "encode_latents": "encode-latents",
    "train": "train",
    "sample": "sample",
    "sample_curve_point": "sample",
    "sample_guidance_point": "sample",
    "sample_pretrained": "sample",
    "reference_stats": "reference-stats",
    "fid_floor": "fid-floor",
    "fid": "fid",
    "fid_curve_point": "fid",
    "fid_guidance_point": "fid",
    "fid_pretrained": "fid",
    "train_classifier": "train-classifier",
    "accuracy": "accuracy",
    "accuracy_guidance_point": "accuracy",
    "sample_grid": "sample-grid",
    "figures": "figures",
    "tables": "tables",
}


@functools.cache
def module_closure(command: str) -> tuple[str, ...]:
    """Names of the uvit modules a subcommand runs: its entry modules, their transitive uvit imports, the CLI.
    A name is dotted below uvit: `data`, `sources` (a subpackage's __init__.py), `sources.celeba`."""
    seen, todo = {"cli"}, list(entry_modules(command))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += uvit_imports(name)
    return tuple(sorted(seen))


def module_path(name: str) -> str:
    """A module's file relative to the package: `sources.celeba` -> sources/celeba.py, `sources` ->
    sources/__init__.py."""
    path = name.replace(".", "/")
    return f"{path}/__init__.py" if (PACKAGE / path).is_dir() else f"{path}.py"


def is_module(parts: list[str]) -> bool:
    path = PACKAGE.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def statements(tree: ast.AST):
    """Every statement of a module, nested ones included (imports are statements: the expressions, most of the
    tree, need no visit; ast.walk over them was a third of this module's time at each Snakemake start)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for body in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo += getattr(node, body, None) or []


@functools.cache
def uvit_imports(name: str) -> tuple[str, ...]:
    """The uvit modules one module imports (parsed once per process: every subcommand's closure shares them).
    Importing `uvit.a.b` runs the package a's __init__.py as well, and `from uvit.a import b` imports the
    module a.b where there is one; relative imports count from the module's own package."""
    path = module_path(name)
    package = name.split(".")[: None if path.endswith("__init__.py") else -1]
    imported: list[list[str]] = []
    for node in statements(ast.parse((PACKAGE / path).read_text())):
        if isinstance(node, ast.Import):
            imported += [alias.name.split(".")[1:] for alias in node.names if alias.name.startswith("uvit.")]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module.split(".") if node.module else []
        if node.level:
            target = package[: len(package) - node.level + 1] + module
        elif module[:1] == ["uvit"]:
            target = module[1:]
        else:
            continue
        submodules = [[*target, alias.name] for alias in node.names if is_module([*target, alias.name])]
        imported += [target, *submodules]
    # Each imported module and the packages above it, whose __init__.py the import runs first.
    names = [".".join(parts[:i]) for parts in imported for i in range(1, len(parts) + 1)]
    return tuple(dict.fromkeys(names))


def package_data(command: str) -> list[str]:
    """The package data (files or folders, relative to the package) of the modules a subcommand runs."""
    return [entry for name in module_closure(command) for entry in PACKAGE_DATA.get(name, [])]


def code_files(command: str) -> list[Path]:
    """The source files (and package data) a subcommand's output depends on."""
    files = [PACKAGE / module_path(name) for name in module_closure(command)]
    for entry in package_data(command):
        path = PACKAGE / entry
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    return [f for f in files if f.is_file()]


@functools.cache
def code_hash(command: str) -> str:
    digest = hashlib.sha256()
    for path in code_files(command):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# Rules whose settings are a file given from outside the pipeline: the record names the file, the lineage also
# stamps its size and time (replacing the file reruns the import).
IMPORT_RULES = ("import_autoencoder", "import_reference", "import_weights")
# A job's DVC stage is `<rule>@<key>` (one `foreach` entry of dvc.yaml per job), its settings record
# settings/<rule>/<key>.json; the key is the job's wildcard value(s), as its log file is named. A rule without
# wildcards (tables, figures) is one stage of that name, its record settings/<rule>.json.
STAGE_KEYS = {
    "encode_text": "{dataset}-{split}",
    "reference_stats": "{dataset}-{split}{n}",
    "fid_floor": "{dataset}-{ref}-{split}{n}",
    "sample_curve_point": "{experiment}-step{step}-sampler_steps{sampler_steps}",
    "fid_curve_point": "{experiment}-step{step}-sampler_steps{sampler_steps}",
    "sample_guidance_point": "{experiment}-scale{scale}",
    "fid_guidance_point": "{experiment}-scale{scale}",
    "accuracy_guidance_point": "{experiment}-scale{scale}",
}


def stage_key(rule: str, wildcards: dict) -> str:
    if not wildcards:
        return ""
    pattern = STAGE_KEYS.get(rule)
    return pattern.format(**wildcards) if pattern else "-".join(map(str, wildcards.values()))


def stage_name(rule: str, wildcards: dict) -> str:
    """A job's DVC stage name (what `dvc repro` and dvc.lock call it)."""
    key = stage_key(rule, wildcards)
    return f"{rule}@{key}" if key else rule


def settings_path(rule: str, wildcards: dict) -> str:
    return settings_record(rule, stage_key(rule, wildcards) or None)


def experiment_jobs(params: dict, name: str) -> list[tuple[str, dict]]:
    """An experiment's final jobs (its metrics files, as uvit.config.metrics_paths lists them): the jobs upstream of
    them follow from the lineage."""
    from uvit.config import autoencoder_metrics_paths, curve_points, guidance_label, guidance_points

    exp = resolve_experiment(params, name)
    jobs = [("fid", {"experiment": name})]
    for step, sampler_steps in curve_points(exp):
        point = {"experiment": name, "step": str(step), "sampler_steps": str(sampler_steps)}
        jobs.append(("fid_curve_point", point))
    scales = [guidance_label(s) for s in guidance_points(exp)]
    jobs += [("fid_guidance_point", {"experiment": name, "scale": scale}) for scale in scales]
    if exp["evaluation"]["pretrained_weights"]:
        jobs.append(("fid_pretrained", {"experiment": name}))
    if exp["evaluation"]["classifier"]:
        jobs.append(("accuracy", {"experiment": name}))
        jobs += [("accuracy_guidance_point", {"experiment": name, "scale": scale}) for scale in scales]
    if autoencoder_metrics_paths(params, name):  # it trains its autoencoder
        jobs.append(("train_autoencoder", {"autoencoder": exp["autoencoder"]}))
    return jobs


def dag_jobs(params: dict, experiments, report: bool = False) -> dict[str, tuple[str, dict]]:
    """{stage name: (rule, wildcards)} of every job the experiments' metrics need (upstream first), plus the
    targets' sample grids, tables and figures when `report` (the DAG of `snakemake`'s default target)."""
    lineage = Lineage(params)
    for name in experiments:
        for rule, wildcards in experiment_jobs(params, name):
            lineage(rule, **wildcards)
    if report:
        for name in params["targets"]:
            lineage("sample_grid", experiment=name)
        lineage("figures")
        lineage("tables")
    return lineage.jobs


def all_jobs(params: dict) -> dict[str, tuple[str, dict]]:
    """Every job of every experiment in params.yaml (paper rows included) and of the default target."""
    return dag_jobs(params, params["experiments"], report=True)


def settings_text(settings: dict) -> str:
    return json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n"


def _hash(record) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_stamp(path: str) -> dict:
    """A file given from outside the pipeline (weights, reference, autoencoder): replacing it changes the stamp."""
    try:
        stat = os.stat(path)
    except OSError:
        return {"path": path, "missing": True}
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def autoencoder_reference(params: dict, autoencoder: str) -> dict | None:
    """The experiment whose FID reference scores a trained autoencoder's held-out reconstructions (the first one
    encoding with it, in params.yaml order; its reference gives the floor at the autoencoder's count), or None."""
    for name in params["experiments"]:
        exp = resolve_experiment(params, name)
        if exp["space"] == "latent" and exp["autoencoder"] == autoencoder:
            return exp
    return None


def given_reference(params: dict, ref: str) -> str | None:
    """The params.yaml path of the given reference .npz named `ref` (None if the pipeline computes it)."""
    for name in params["experiments"]:
        path = resolve_experiment(params, name)["evaluation"]["reference_npz"]
        if path and Path(path).stem == ref:
            return path
    return None


def reference_protocol(params: dict, ref: str, dataset: str | None = None) -> str:
    """The evaluation.fid_protocol of the experiments scored against reference `ref` (of `dataset`): the one the
    reference is made or imported with. Experiments sharing a reference must agree."""
    users: dict[str, str] = {}
    for name in params["experiments"]:
        exp = resolve_experiment(params, name)
        if reference_name(exp["evaluation"]) == ref and dataset in (None, exp["dataset"]):
            users.setdefault(exp["evaluation"]["fid_protocol"], name)
    if len(users) > 1:
        (a, first), (b, second) = list(users.items())[:2]
        raise UserError(
            f"params.yaml: experiments.{first}.evaluation.fid_protocol is {a!r}, experiments.{second}'s {b!r}, and "
            f"both use the reference {ref}; give them one protocol or different reference_images"
        )
    return next(iter(users), "clean")


class Lineage:
    """Lineage hashes of the DAG's jobs for one params.yaml: hash(rule, settings, code, upstream hashes)."""

    def __init__(self, params: dict):
        self.params = params
        self._memo: dict[tuple, str] = {}
        self.jobs: dict[str, tuple[str, dict]] = {}  # every job hashed, upstream first
        self._experiments: dict[str, dict] = {}
        self._given: dict[str, str] | None = None

    def __call__(self, rule: str, **wildcards) -> str:
        key = (rule, *sorted(wildcards.items()))
        if key not in self._memo:
            settings, upstream = getattr(self, rule)(**wildcards)
            record = {"rule": rule, "settings": settings, "code": code_hash(RULE_COMMANDS[rule])}
            record["upstream"] = upstream
            self._memo[key] = _hash(record)
            wildcards = {name: str(value) for name, value in wildcards.items()}
            self.jobs.setdefault(stage_name(rule, wildcards), (rule, wildcards))
        return self._memo[key]

    def settings(self, rule: str, **wildcards) -> dict:
        """The complete settings a job reads, as its engines' params (outside files by path, not by stamp)."""
        settings, _ = getattr(self, rule)(**wildcards)
        if rule in IMPORT_RULES:
            return {"source": settings["path"]}
        return {key: value for key, value in settings.items() if key != "root_stamp"}

    def write_settings(self, jobs: dict[str, tuple[str, dict]], root: Path = Path(".")) -> list[str]:
        """Write each job's settings record (settings/<rule>/<key>.json), rewriting only those whose settings
        changed (DVC compares contents) and removing the records of jobs no longer in the DAG."""
        changed, keep = [], set()
        for name, (rule, wildcards) in jobs.items():
            path = root / settings_path(rule, wildcards)
            keep.add(path)
            text = settings_text(self.settings(rule, **wildcards))
            if not path.is_file() or path.read_text() != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                changed.append(name)
        for path in sorted((root / SETTINGS_DIR).rglob("*.json")):
            if path not in keep:
                path.unlink()
                changed.append(str(path.relative_to(root)))
        return changed

    # -- data ------------------------------------------------------------------------------------------
    def prepare_data(self, dataset):
        cfg = self.params["datasets"][dataset]
        # The raw root as found: a replaced archive or an added/removed file reruns preparation.
        return {**cfg, **({"root_stamp": source_stamp(cfg["root"])} if "root" in cfg else {})}, []

    def encode_text(self, dataset, split):
        cfg = self.params["datasets"][dataset]
        return {"encoder": cfg["text_encoder"], "tokens": text_tokens(cfg), "split": split}, [
            self("prepare_data", dataset=dataset)
        ]

    def import_autoencoder(self, autoencoder):
        return source_stamp(self.params["autoencoders"][autoencoder]["pretrained"]), []

    def train_autoencoder(self, autoencoder):
        cfg = self.params["autoencoders"][autoencoder]
        scored_by = autoencoder_reference(self.params, autoencoder)
        reference = (
            []
            if scored_by is None
            else [self.reference(scored_by["dataset"], reference_name(scored_by["evaluation"]))]
        )
        return cfg, [self("prepare_data", dataset=cfg["dataset"]), *reference]

    def autoencoder(self, name: str) -> str:
        cfg = self.params["autoencoders"][name]
        rule = "import_autoencoder" if "pretrained" in cfg else "train_autoencoder"
        return self(rule, autoencoder=name)

    def encode_latents(self, autoencoder):
        cfg = self.params["autoencoders"][autoencoder]
        return {"scale_factor": cfg.get("scale_factor"), "flips": encodes_flips(cfg)}, [
            self.autoencoder(autoencoder),
            self("prepare_data", dataset=cfg["dataset"]),
        ]

    # -- an experiment's jobs --------------------------------------------------------------------------
    def experiment(self, name: str) -> dict:
        if name not in self._experiments:
            self._experiments[name] = resolve_experiment(self.params, name)
        return self._experiments[name]

    def given_reference(self, ref: str) -> str | None:
        """given_reference, resolving each experiment once."""
        if self._given is None:
            self._given = {}
            for name in self.params["experiments"]:
                path = self.experiment(name)["evaluation"]["reference_npz"]
                if path:
                    self._given.setdefault(Path(path).stem, path)
        return self._given.get(ref)

    def conditioning(self, exp: dict, stage: str) -> list[str]:
        """The jobs behind an experiment's data, latents, autoencoder and captions."""
        up = [self("prepare_data", dataset=exp["dataset"])]
        if exp["space"] == "latent":
            up += [
                self("encode_latents", autoencoder=exp["autoencoder"]),
                self.autoencoder(exp["autoencoder"]),
            ]
        if exp["condition"] == "text":
            split = "train" if stage == "train" else caption_split(exp)
            up.append(self("encode_text", dataset=exp["dataset"], split=split))
        return up

    def train(self, experiment):
        exp = self.experiment(experiment)
        return stage_settings(exp, "train"), self.conditioning(exp, "train")

    def sample(self, experiment):
        exp = self.experiment(experiment)
        return stage_settings(exp, "sample"), [
            self("train", experiment=experiment),
            *self.conditioning(exp, "sample"),
        ]

    def sample_curve_point(self, experiment, step, sampler_steps):
        settings, upstream = self.sample(experiment)
        return {**settings, "step": int(step), "sampler_steps": int(sampler_steps)}, upstream

    def guidance_point(self, experiment: str, scale: str) -> dict:
        """The experiment sampled at another guidance scale: its settings are exactly what that point runs."""
        return evaluation_point(self.experiment(experiment), guidance_scale=float(scale))

    def sample_guidance_point(self, experiment, scale):
        exp = self.guidance_point(experiment, scale)
        return stage_settings(exp, "sample"), [
            self("train", experiment=experiment),
            *self.conditioning(exp, "sample"),
        ]

    def import_weights(self, experiment):
        return source_stamp(self.experiment(experiment)["evaluation"]["pretrained_weights"]), []

    def sample_pretrained(self, experiment):
        exp = self.experiment(experiment)
        up = [self("import_weights", experiment=experiment)]
        if exp["space"] == "latent":
            up.append(self.autoencoder(exp["autoencoder"]))
        if exp["condition"] == "text":
            up.append(self("encode_text", dataset=exp["dataset"], split=caption_split(exp)))
        return stage_settings(exp, "sample"), up

    # -- FID -------------------------------------------------------------------------------------------
    def import_reference(self, ref):
        return {
            **source_stamp(self.given_reference(ref)),
            "protocol": reference_protocol(self.params, ref),
        }, []

    def reference_stats(self, dataset, split, n):
        protocol = reference_protocol(self.params, f"{split}{n}", dataset)
        return {"split": split, "n": int(n), "protocol": protocol}, [self("prepare_data", dataset=dataset)]

    def reference(self, dataset: str, ref: str) -> str:
        if self.given_reference(ref):
            return self("import_reference", ref=ref)
        split, n = re.fullmatch(r"(train|test|val)(\d+)", ref).groups()
        return self("reference_stats", dataset=dataset, split=split, n=n)

    def fid_floor(self, dataset, ref, split, n):
        return {"split": split, "n": int(n)}, [
            self("prepare_data", dataset=dataset),
            self.reference(dataset, ref),
        ]

    def fid_inputs(self, exp: dict) -> list[str]:
        ev, ref = exp["evaluation"], reference_name(exp["evaluation"])
        floor = self(
            "fid_floor",
            dataset=exp["dataset"],
            ref=ref,
            split=ev["floor_split"],
            n=exp["sampling"]["num_samples"],
        )
        return [self.reference(exp["dataset"], ref), floor]

    def fid(self, experiment):
        exp = self.experiment(experiment)
        return stage_settings(exp, "fid"), [self("sample", experiment=experiment), *self.fid_inputs(exp)]

    def fid_curve_point(self, experiment, step, sampler_steps):
        exp = self.experiment(experiment)
        point = self("sample_curve_point", experiment=experiment, step=step, sampler_steps=sampler_steps)
        return {**stage_settings(exp, "fid"), "step": int(step), "sampler_steps": int(sampler_steps)}, [
            point,
            *self.fid_inputs(exp),
        ]

    def fid_guidance_point(self, experiment, scale):
        exp = self.guidance_point(experiment, scale)
        up = [self("sample_guidance_point", experiment=experiment, scale=scale), *self.fid_inputs(exp)]
        return stage_settings(exp, "fid"), up

    # -- classifier accuracy -----------------------------------------------------------------------------
    def train_classifier(self, classifier):
        cfg = self.params["classifiers"][classifier]
        return cfg, [self("prepare_data", dataset=cfg["dataset"])]

    def accuracy_inputs(self, exp: dict) -> list[str]:
        return [
            self("train_classifier", classifier=exp["evaluation"]["classifier"]),
            self("prepare_data", dataset=exp["dataset"]),
        ]

    def accuracy(self, experiment):
        exp = self.experiment(experiment)
        return accuracy_settings(self.params, exp), [
            self("sample", experiment=experiment),
            *self.accuracy_inputs(exp),
        ]

    def accuracy_guidance_point(self, experiment, scale):
        exp = self.guidance_point(experiment, scale)
        up = [self("sample_guidance_point", experiment=experiment, scale=scale), *self.accuracy_inputs(exp)]
        return accuracy_settings(self.params, exp), up

    def fid_pretrained(self, experiment):
        exp = self.experiment(experiment)
        ref = self.reference(exp["dataset"], reference_name(exp["evaluation"]))
        up = [self("sample_pretrained", experiment=experiment), ref]
        if not exp["evaluation"]["reference_npz"] or exp["condition"] == "text":  # scored with a floor
            up = [self("sample_pretrained", experiment=experiment), *self.fid_inputs(exp)]
        return stage_settings(exp, "fid"), up

    # -- tables and figures (their metrics inputs rerun them when they change) -------------------------------
    def sample_grid(self, experiment):
        return {}, [self("sample", experiment=experiment)]

    def report_settings(self):
        return {"targets": self.params["targets"], "ablations": self.params.get("ablations")}, []

    figures = tables = report_settings
