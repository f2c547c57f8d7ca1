"""params.yaml: loading, validation and per-experiment resolution.

params.yaml is the single source of every setting. It is validated against
workflow/schemas/params.schema.yaml, then cross-checked (names that refer to other entries, shapes that
must divide). Any problem raises `ConfigError` with a one-line message that names the key.
An experiment's settings are `defaults` deep-merged with its entry under `experiments`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from uvit import layout
from uvit.errors import UserError
from uvit.zoo import CONTEXT_TOKENS, MODEL_ZOO

# Which schedules each sampler (uvit.diffusion) runs on; here, torch-free, so the DAG validates it fast.
SAMPLER_SCHEDULES: dict[str, tuple[str, ...]] = {
    "euler_maruyama": ("vp_linear",),
    "dpm_solver": ("vp_linear",),
    "dpm_solver_pp": ("stable", "ddpm_linear"),
    "dpm_solver_pp_2m": ("stable", "ddpm_linear"),
}

SCHEMA_PATH = Path("workflow/schemas/params.schema.yaml")

# Which parts of a resolved experiment each stage reads. Snakemake re-runs a stage when these change
# (they are the rule's params) and dvc.yaml declares the same keys, so both engines agree on staleness.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("dataset", "space", "autoencoder", "condition", "model", "diffusion", "training"),
    "sample": ("dataset", "space", "autoencoder", "condition", "model", "diffusion", "sampling"),
    "fid": ("evaluation", "sampling"),
}
# Evaluation keys that add evaluations of their own (stages of their own), not ones a stage above computes with:
# adding a sampler step count, a guidance scale or a classifier must not rerun the FIDs already there.
EVALUATION_ADDITIONS = ("sampler_steps", "guidance_scales", "classifier")


def text_tokens(dataset: dict) -> int:
    """Context tokens per caption of a text dataset."""
    return dataset.get("text_tokens", CONTEXT_TOKENS)


class ConfigError(UserError, ValueError):
    """A problem in params.yaml; the message names the key and what was expected."""


def load_params(
    path: str | Path = "params.yaml", schema_path: str | Path | None = None, overlays: tuple = ()
) -> dict:
    """Read, schema-validate and cross-check params.yaml; return it as a dict. `overlays` are further YAML
    files deep-merged over it first (the tests' own experiments: tests/smoke.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the project root or pass --params)")
    params = read_params(path, overlays)
    schema_path = Path(schema_path) if schema_path else path.parent / SCHEMA_PATH
    schema = read_yaml(schema_path)
    validate_against_schema(params, schema, source=str(path))
    expand_ablations(params, source=str(path))
    with ablation_keys_named(params, source=str(path)):
        written = {key: value for key, value in params.items() if key != "target_grids"}
        validate_against_schema(written, schema, source=str(path))
        check_references(params, source=str(path))
    return params


def read_params(path: Path, overlays: tuple = ()) -> dict:
    """params.yaml as written, with each overlay file deep-merged over it (not yet validated)."""
    params = read_yaml(path)
    for overlay in overlays:
        params = deep_merge(params, read_yaml(Path(overlay)))
    return params


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A SafeLoader (libyaml's where PyYAML has it: ~8x faster, read by every stage) that refuses a key given twice
    in one mapping (plain YAML silently keeps the last one)."""

    def construct_document(self, node):
        refuse_duplicate_keys(node, [], set())
        return super().construct_document(node)


def refuse_duplicate_keys(node: yaml.Node, path: list[str], seen_nodes: set[int]) -> None:
    """Raise ConfigError naming the first key written twice in a mapping (merge keys `<<:` may be overridden)."""
    if id(node) in seen_nodes:  # an alias: checked where its anchor is
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if key in lines and key != "<<":
                raise ConfigError(
                    f"{node.start_mark.name}: {_dotted([*path, key])} (line {line}): key given twice (first on "
                    f"line {lines[key]}); keep one of them (YAML would silently use the last)"
                )
            lines[key] = line
            refuse_duplicate_keys(value_node, [*path, key], seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            refuse_duplicate_keys(item, [*path, str(i)], seen_nodes)


def read_yaml(path: str | Path) -> Any:
    """A YAML file read safely, refusing duplicate keys; any problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); check the file and its permissions") from None
    stream = io.StringIO(text)
    stream.name = str(path)  # the file its marks name (line numbers in messages)
    try:
        loader = UniqueKeyLoader(stream)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def ablation_experiment_name(grid: str, axis: str, value: Any, seed: int | None = None) -> str:
    """The experiment of one grid value (and seed, where the grid declares seeds), e.g. skip_demo__skip_add,
    skip_demo__skip_add__seed1 or cifar10_section31__depth_17__seed0."""
    name = f"{grid}__{axis}_{str(value).lower().replace('.', 'p').replace('-', 'm')}"
    return name if seed is None else f"{name}__seed{seed}"


def grid_seeds(spec: dict) -> list[int | None]:
    """The seeds each variant of a grid runs with: its `seeds`, or [None] (one run with the base's own seeds,
    named without a seed)."""
    return list(spec.get("seeds") or [None])


def variant_runs(params: dict, grid: str, axis: str, value: Any) -> dict[int | None, str]:
    """seed -> experiment of one grid value, in the grid's seed order."""
    spec = params["ablations"][grid]
    return {seed: ablation_experiment_name(grid, axis, value, seed) for seed in grid_seeds(spec)}


def seed_overrides(params: dict, base: dict, seed: int | None) -> dict:
    """Seed k of a grid trains and samples with the base's training.seed and sampling.seed (written or default)
    each plus k: seed 0 is the base's own run, and every seed changes both the weights and the samples."""
    if seed is None:
        return {}
    resolved = deep_merge(params["defaults"], base)
    return {section: {"seed": resolved[section]["seed"] + seed} for section in ("training", "sampling")}


def check_grid_seeds(grid: str, spec: dict, source: str) -> None:
    """The schema's `integer` admits 1.0; a seed is part of experiment names (`__seed1`), so a plain int."""
    for i, seed in enumerate(spec.get("seeds") or []):
        if type(seed) is not int:
            raise ConfigError(
                f"{source}: ablations.{grid}.seeds.{i}: {seed!r} is not an integer (seeds: a list of distinct "
                "integers >= 0, e.g. [0, 1, 2])"
            )


def expand_ablations(params: dict, source: str = "params.yaml") -> None:
    """Turn every value of every ablation axis, once per seed of its grid, into an experiment (the base experiment
    with that one model key changed, and its seeds offset), and every grid name in `targets` into the grid's
    experiments. In place."""
    grids, experiments = params.get("ablations") or {}, params["experiments"]
    for grid, spec in grids.items():
        base = experiments.get(spec["base"])
        if base is None:
            raise ConfigError(f"{source}: ablations.{grid}.base: unknown experiment {spec['base']!r}")
        check_grid_seeds(grid, spec, source)
        for axis, values in spec["axes"].items():
            for value in values:
                for seed, name in variant_runs(params, grid, axis, value).items():
                    if name in experiments:
                        raise ConfigError(f"{source}: ablations.{grid}: experiment {name!r} already exists")
                    entry = deep_merge(base, {"model": {axis: value}, **seed_overrides(params, base, seed)})
                    seeded = "" if seed is None else f", seed {seed}"
                    entry["description"] = f"{base['description']}; ablation: {axis} = {value}{seeded}"
                    entry["ablation"] = {"grid": grid, "axis": axis, "value": value, "seed": seed}
                    experiments[name] = entry
    params["target_grids"] = [target for target in params["targets"] if target in grids]
    for key in ("targets", "quick_targets"):
        params[key] = [
            name for target in params[key] for name in (grid_experiments(params, target) or [target])
        ]


TIERS = ("quick", "full")  # make demo | make demo-full (snakemake --config tier=...)


def tier_targets(params: dict, tier: str) -> list[str]:
    """The experiments a demo tier builds: `full` every target, `quick` those of quick_targets."""
    if tier not in TIERS:
        raise ConfigError(f"tier: {tier!r} is not one of {', '.join(TIERS)} (snakemake --config tier=quick)")
    return params["quick_targets"] if tier == "quick" else params["targets"]


def grid_experiments(params: dict, grid: str) -> list[str]:
    """The experiments of an ablation grid, axis by axis and value by value in params.yaml order, each value's
    seeds together (empty if no such grid)."""
    spec = (params.get("ablations") or {}).get(grid)
    if spec is None:
        return []
    return [
        name
        for axis, values in spec["axes"].items()
        for value in values
        for name in variant_runs(params, grid, axis, value).values()
    ]


@contextlib.contextmanager
def ablation_keys_named(params: dict, source: str):
    """Errors in an expanded experiment name the ablation grid value that made it."""
    try:
        yield
    except ConfigError as err:
        for name, exp in params["experiments"].items():
            prefix = f"{source}: experiments.{name}"
            if "ablation" in exp and str(err).startswith((prefix + ".", prefix + ":")):
                a = exp["ablation"]
                where = f"{source}: ablations.{a['grid']}.axes.{a['axis']} (value {a['value']!r}, experiment {name})"
                raise ConfigError(where + str(err)[len(prefix) :]) from None
        raise


def validate_against_schema(params: Any, schema: dict, source: str = "params.yaml") -> None:
    """Raise ConfigError for the first (deepest) schema violation, naming its key."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(params), key=lambda e: (-len(e.absolute_path), str(e.absolute_path))
    )
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    # best_match prefers shallow errors of allOf/anyOf; descend to the most specific one.
    while error.context:
        error = min(error.context, key=lambda e: -len(e.absolute_path))
    key = _dotted(error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        raise ConfigError(f"{source}: {key}: unknown key {', '.join(map(repr, extra))}{hint}")
    if error.validator == "required":
        raise ConfigError(f"{source}: {key}: {error.message}")
    if error.validator in ("minimum", "exclusiveMinimum"):
        relation = ">=" if error.validator == "minimum" else ">"
        raise ConfigError(
            f"{source}: {key}: {error.message}; give a number {relation} {error.validator_value}"
        )
    if error.validator == "enum":
        choices = ", ".join(map(repr, error.validator_value))
        raise ConfigError(f"{source}: {key}: {error.instance!r} is not one of {choices}")
    raise ConfigError(f"{source}: {key}: {error.message}")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated by override, recursing into nested dicts (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Record(dict):
    """A resolved experiment, read-only: resolved once, never edited in place by what reads it. A variant is a new
    record (evaluation_point); copy.deepcopy gives a plain, mutable copy of the settings without `derived` (tests
    and benchmarks that try settings), which `experiment_record` turns into a record again: a value derived from
    settings that were edited afterwards is never read."""

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a resolved experiment is read-only; build a variant with uvit.config.evaluation_point, or edit a "
            "copy.deepcopy of it"
        )

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = __ior__ = _refuse

    def __deepcopy__(self, memo):
        return {key: copy.deepcopy(value, memo) for key, value in self.items() if key != DERIVED}

    def __or__(self, other):  # record | {...}: a plain copy too, never one that keeps stale derived values
        return copy.deepcopy(self) | other

    def __reduce__(self):  # pickled for DataLoader workers: rebuilt without __setitem__
        return (Record, (dict(self),))


def freeze(settings):
    """Settings as read-only records, sections included (lists stay lists: JSON and comparisons see no change)."""
    if isinstance(settings, dict):
        return Record({key: freeze(value) for key, value in settings.items()})
    return settings


def resolve_experiment(params: dict, name: str) -> Record:
    """The full settings of one experiment, read-only: defaults, its overrides, and its zoo model if named."""
    if name not in params["experiments"]:
        close = difflib.get_close_matches(name, params["experiments"], n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        known = ", ".join(sorted(params["experiments"]))
        raise ConfigError(f"params.yaml: experiments.{name}: no such experiment; {hint}(known: {known})")
    exp = deep_merge(params["defaults"], params["experiments"][name])
    exp["model"] = model_settings(params, params["experiments"][name])
    exp["name"] = name
    return experiment_record(params, exp)


DERIVED = "derived"


def experiment_record(params: dict, settings: dict) -> Record:
    """An experiment's settings as a read-only record, with the values they decide without stating them."""
    return freeze({**settings, DERIVED: derived_values(params, settings)})


def derived_values(params: dict, exp: dict) -> dict:
    """What an experiment's settings decide without stating it, worked out here only (a record's `derived`):
    - input_size: the side of the U-ViT's input, the image resolution or the latent one;
    - latent_shape, latent_scale_factor: a latent experiment's latents (channels, side, side) and the autoencoder's
      fixed scale factor (None: measured over the encoded training set; both None for pixel experiments);
    - guidable: trained for classifier-free guidance (a condition, dropped at cond_drop_prob > 0);
    - null_class: a class model's extra class-embedding row, the null class of guidance (uvit.conditioning).
    The data decides the rest: a pixel dataset's channels, its class count, a text encoder's null context."""
    latent = exp["space"] == "latent"
    ae = params["autoencoders"][exp["autoencoder"]] if latent else None
    side = params["datasets"][exp["dataset"]]["resolution"] // (autoencoder_downsampling(ae) if latent else 1)
    guidable = exp["condition"] != "none" and exp["training"]["cond_drop_prob"] > 0
    return {
        "input_size": side,
        "latent_shape": [ae["latent_channels"], side, side] if latent else None,
        "latent_scale_factor": ae.get("scale_factor") if latent else None,
        "guidable": guidable,
        "null_class": exp["condition"] == "class" and guidable,
    }


def model_settings(params: dict, raw_experiment: dict) -> dict:
    """An experiment's model: the default settings, then its zoo entry if named, then the keys the experiment
    itself sets (so `name: U-ViT-S/2, skip: none` is U-ViT-S/2 without long skips). The one resolution of a
    `model` section: it has every architecture setting (the schema requires each in defaults.model), which
    uvit.model.build_model reads as they are; the sizes the data decides (image size, channels, classes, a text
    model's context) are uvit.model.model_for's."""
    own = raw_experiment.get("model", {})
    model = dict(params["defaults"]["model"])
    name = own.get("name", model["name"])
    if name is not None:
        model.update(MODEL_ZOO[name])
    return model | own


def check_references(params: dict, source: str = "params.yaml") -> None:
    """Cross-checks the schema cannot express: names that must exist and shapes that must fit."""
    experiments = params["experiments"]
    for i, target in enumerate(params["targets"]):
        if target not in experiments:
            raise ConfigError(
                f"{source}: targets.{i}: unknown experiment {target!r} (known: {', '.join(experiments)})"
            )
    for i, target in enumerate(params["quick_targets"]):
        if target not in params["targets"]:
            raise ConfigError(
                f"{source}: quick_targets.{i}: {target!r} is not in targets (the quick tier is a subset of the "
                "full one); add it to targets or remove it here"
            )
    for name, ae in params["autoencoders"].items():
        if ae["dataset"] not in params["datasets"]:
            raise ConfigError(f"{source}: autoencoders.{name}.dataset: unknown dataset {ae['dataset']!r}")
    for name, cfg in params["classifiers"].items():
        if cfg["dataset"] not in params["datasets"]:
            raise ConfigError(f"{source}: classifiers.{name}.dataset: unknown dataset {cfg['dataset']!r}")
    for name in experiments:
        _check_experiment(params, name, source)


def _check_experiment(params: dict, name: str, source: str) -> None:
    raw = params["experiments"][name]
    exp = deep_merge(params["defaults"], raw)
    key = f"{source}: experiments.{name}"
    if exp["dataset"] not in params["datasets"]:
        raise ConfigError(
            f"{key}.dataset: unknown dataset {exp['dataset']!r} (known: {', '.join(params['datasets'])})"
        )
    if exp["model"]["name"] is not None and exp["model"]["name"] not in MODEL_ZOO:
        raise ConfigError(
            f"{key}.model.name: unknown model {exp['model']['name']!r} (known: {', '.join(MODEL_ZOO)})"
        )
    model = model_settings(params, raw)
    if exp["space"] == "latent":
        ae = exp["autoencoder"]
        if ae not in params["autoencoders"]:
            raise ConfigError(
                f"{key}.autoencoder: latent experiments need an autoencoder from `autoencoders`, got {ae!r}"
            )
        if params["autoencoders"][ae]["dataset"] != exp["dataset"]:
            raise ConfigError(
                f"{key}.autoencoder: {ae!r} is trained on another dataset than {exp['dataset']!r}"
            )
        if exp["training"]["hflip"] and not encodes_flips(params["autoencoders"][ae]):
            raise ConfigError(
                f"{key}.training.hflip: true needs the flipped latents, which autoencoders.{ae} does not encode "
                "(encode_flips: false); set training.hflip: false or encode_flips: true"
            )
    elif exp["autoencoder"] is not None:
        raise ConfigError(f"{key}.autoencoder: set only for space: latent (this experiment is pixel-space)")
    derived = derived_values(params, exp)
    if model["embed_dim"] % model["num_heads"]:
        raise ConfigError(
            f"{key}.model.num_heads: {model['num_heads']} does not divide embed_dim {model['embed_dim']}"
        )
    if model["depth"] % 2 == 0:
        raise ConfigError(
            f"{key}.model.depth: must be odd (depth//2 in-blocks, 1 mid-block, depth//2 out-blocks)"
        )
    grid = derived["input_size"]
    if grid % model["patch_size"]:
        raise ConfigError(
            f"{key}.model.patch_size: {model['patch_size']} does not divide the input size {grid}"
        )
    if model["patch_embed"] == "conv_stack" and model["patch_size"] & (model["patch_size"] - 1):
        raise ConfigError(
            f"{key}.model.patch_embed: conv_stack needs a power-of-two patch_size, got {model['patch_size']}"
        )
    if model["pos_embed"] == "sinusoidal_2d" and model["embed_dim"] % 4:
        raise ConfigError(
            f"{key}.model.pos_embed: sinusoidal_2d needs embed_dim divisible by 4, got {model['embed_dim']}"
        )
    for i, step in enumerate(exp["training"]["keep_steps"]):
        if step >= exp["training"]["steps"]:
            raise ConfigError(
                f"{key}.training.keep_steps.{i}: {step} is not before the last step ({exp['training']['steps']}); "
                "the final weights are always evaluated"
            )
    if exp["condition"] == "text" and "text_encoder" not in params["datasets"][exp["dataset"]]:
        raise ConfigError(
            f"{key}.condition: text needs captions: dataset {exp['dataset']!r} sets no text_encoder "
            "(text datasets: source mscoco or emoji)"
        )
    schedule, sampler = exp["diffusion"]["schedule"], exp["sampling"]["sampler"]
    if schedule not in SAMPLER_SCHEDULES[sampler]:
        raise ConfigError(
            f"{key}.sampling.sampler: {sampler} does not run on diffusion.schedule {schedule!r} "
            f"(it runs on: {', '.join(SAMPLER_SCHEDULES[sampler])})"
        )
    if exp["sampling"]["guidance_scale"] > 0 and not derived["guidable"]:
        raise ConfigError(
            f"{key}.sampling.guidance_scale: guidance needs condition: class or text and training.cond_drop_prob > 0"
        )
    scales = exp["evaluation"]["guidance_scales"]
    if scales and (exp["condition"] == "none" or (max(scales) > 0 and not derived["guidable"])):
        raise ConfigError(
            f"{key}.evaluation.guidance_scales: {scales} needs condition: class or text and training.cond_drop_prob "
            f"> 0 (this experiment: condition {exp['condition']}, cond_drop_prob {exp['training']['cond_drop_prob']}); "
            "set evaluation.guidance_scales: [] or train the experiment for guidance"
        )
    _check_classifier(params, exp, key)


def _check_classifier(params: dict, exp: dict, key: str) -> None:
    """The classifier an experiment's samples are scored with: a class model's, trained on the same data."""
    name = exp["evaluation"]["classifier"]
    if name is None:
        return
    if name not in params["classifiers"]:
        known = ", ".join(params["classifiers"]) or "none"
        raise ConfigError(
            f"{key}.evaluation.classifier: unknown classifier {name!r} (under `classifiers`: {known})"
        )
    if exp["condition"] != "class":
        raise ConfigError(
            f"{key}.evaluation.classifier: scores samples by the class they were drawn for, and this experiment has "
            f"condition: {exp['condition']}; set evaluation.classifier: null"
        )
    if params["classifiers"][name]["dataset"] != exp["dataset"]:
        raise ConfigError(
            f"{key}.evaluation.classifier: {name!r} is trained on dataset {params['classifiers'][name]['dataset']!r}, "
            f"this experiment samples {exp['dataset']!r}; name a classifier of {exp['dataset']!r}"
        )


def encodes_flips(ae: dict) -> bool:
    """Whether the encode stage stores each image's horizontal flip beside it (the authors' features do, for
    training.hflip); optional key, absent = true."""
    return ae.get("encode_flips", True)


def encode_flags(ae: dict) -> str:
    """`uvit encode-latents` flags of an autoencoder: a pretrained one's fixed latent scale (trained ones measure
    theirs), and no flips where it encodes none."""
    scale = ae.get("scale_factor")
    flags = [f"--scale-factor {scale}"] if scale else []
    return " ".join(flags + ([] if encodes_flips(ae) else ["--no-flips"]))


def autoencoder_downsampling(ae: dict) -> int:
    """Spatial downsampling factor: a pretrained autoencoder's, or an AutoencoderKL's with these block channels."""
    return (
        ae["downsampling"]
        if "pretrained" in ae
        else ae["space_to_depth"] * 2 ** (len(ae["block_channels"]) - 1)
    )


def curve_points(exp: dict) -> list[tuple[int, int]]:
    """(checkpoint step, sampler steps) pairs an experiment evaluates besides its final one: each kept
    checkpoint with the experiment's sampler (FID over training steps), and the final weights with each
    extra step count (FID over sampler steps)."""
    final, steps = exp["training"]["steps"], exp["sampling"]["steps"]
    over_training = [(step, steps) for step in sorted(exp["training"]["keep_steps"])]
    over_sampler = [(final, n) for n in sorted(exp["evaluation"]["sampler_steps"]) if n != steps]
    return over_training + over_sampler


def guidance_points(exp: dict) -> list[float]:
    """Further guidance scales an experiment evaluates at its final weights (`evaluation.guidance_scales`, less
    sampling.guidance_scale: that is the final evaluation itself), in increasing order."""
    main = exp["sampling"]["guidance_scale"]
    return sorted({float(s) for s in exp["evaluation"]["guidance_scales"]} - {float(main)})


def guidance_label(scale: float) -> str:
    """A guidance scale as paths and stage names spell it: the shortest text that reads back as the same
    float (0, 0.4, 1.5), so the command given the path's scale samples at exactly the params.yaml value."""
    text = repr(float(scale))
    return text.removesuffix(".0")


def guidance_metrics_path(name: str, scale: float, kind: str = "fid") -> str:
    """The FID (kind "fid") or classifier-accuracy (kind "accuracy") record of a guidance point."""
    return layout.guidance_metrics(name, guidance_label(scale), kind)


def fid_metrics_paths(params: dict, name: str) -> list[str]:
    """An experiment's FID metrics files (the DAG's outputs, the tables' inputs): final, then curve points, then
    guidance points."""
    exp = resolve_experiment(params, name)
    curve = [layout.curve_metrics(name, s, n) for s, n in curve_points(exp)]
    guidance = [guidance_metrics_path(name, s) for s in guidance_points(exp)]
    pretrained = [layout.released_fid_metrics(name)] if exp["evaluation"]["pretrained_weights"] else []
    return [layout.fid_metrics(name), *curve, *guidance, *pretrained]


def accuracy_metrics_paths(params: dict, name: str) -> list[str]:
    """An experiment's classifier-accuracy records (none without evaluation.classifier): its final samples',
    then each guidance point's."""
    exp = resolve_experiment(params, name)
    if exp["evaluation"]["classifier"] is None:
        return []
    guidance = [guidance_metrics_path(name, s, "accuracy") for s in guidance_points(exp)]
    return [layout.accuracy_metrics(name), *guidance]


def autoencoder_metrics_paths(params: dict, name: str) -> list[str]:
    """The held-out reconstruction record of the autoencoder a latent experiment trains (none for a pretrained
    or no autoencoder)."""
    exp = resolve_experiment(params, name)
    if exp["space"] != "latent" or "pretrained" in params["autoencoders"][exp["autoencoder"]]:
        return []
    return [layout.autoencoder_metrics(exp["autoencoder"])]


def metrics_paths(params: dict, name: str) -> list[str]:
    """Every metrics record an experiment ends in: its FIDs, its classifier accuracies, then its autoencoder's."""
    return (
        fid_metrics_paths(params, name)
        + accuracy_metrics_paths(params, name)
        + autoencoder_metrics_paths(params, name)
    )


def caption_split(exp: dict) -> str:
    """The split whose captions a text experiment samples for (optional key, so older settings keep their hash)."""
    return exp["sampling"].get("caption_split", "test")


def evaluation_point(
    exp: dict,
    training_step: int | None = None,
    sampler_steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict:
    """The experiment as evaluated at an earlier checkpoint, another sampler step count (curve points) or another
    guidance scale (guidance points): a new record, deriving what the originals' settings derive (a point changes
    none of the settings behind them)."""
    derived, exp = exp[DERIVED], copy.deepcopy(exp)
    if training_step is not None:
        exp["training"]["steps"] = training_step
    if sampler_steps is not None:
        exp["sampling"]["steps"] = sampler_steps
    if guidance_scale is not None:
        if guidance_scale > 0 and not derived["guidable"]:
            raise ConfigError(
                f"experiments.{exp['name']}: guidance scale {guidance_scale} needs condition: class or text and "
                f"training.cond_drop_prob > 0 (condition {exp['condition']}, cond_drop_prob "
                f"{exp['training']['cond_drop_prob']}); sample it without guidance (scale 0)"
            )
        exp["sampling"]["guidance_scale"] = guidance_scale
    return freeze({**exp, DERIVED: derived})


def stage_settings(exp: dict, stage: str) -> dict:
    """The parts of a resolved experiment that one stage reads."""
    settings = {section: exp[section] for section in STAGE_SECTIONS[stage]}
    if "evaluation" in settings:
        ev = settings["evaluation"]
        settings["evaluation"] = {k: v for k, v in ev.items() if k not in EVALUATION_ADDITIONS}
    return settings


def accuracy_settings(params: dict, exp: dict) -> dict:
    """What the classifier-accuracy stage of an experiment reads: its classifier (named, with its settings) and the
    samples' settings (which class sample i was drawn for, how many)."""
    name = exp["evaluation"]["classifier"]
    return {"classifier": {"name": name, **params["classifiers"][name]}, "sampling": exp["sampling"]}


def settings_hash(settings: Any) -> str:
    """A stable hash of settings (sorted-key JSON), recorded in metrics and shown in tables."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


PRECISION_KEYS = ("precision", "feature_precision")
# Settings added after metrics files were first recorded, and what a record without them was computed with:
# clean-fid's clean resize (the only protocol then), a constant learning rate; `metrics` only adds numbers such a
# record lacks ('-').
PREDATED = {
    "evaluation.fid_protocol": "clean",
    "evaluation.metrics": None,
    "training.lr_schedule": "constant",
}


def settings_differences(recorded, current, key: str = "") -> list[tuple[str, object, object]]:
    """(key, recorded, current) where the recorded settings differ from the current ones (auto precision
    matches the concrete precision recorded)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [
            diff
            for k in sorted(set(recorded) | set(current))
            for diff in settings_differences(recorded.get(k), current.get(k), f"{key}.{k}".lstrip("."))
        ]
    if recorded == current or (key.rsplit(".", 1)[-1] in PRECISION_KEYS and current == "auto"):
        return []
    if key in {f"evaluation.{k}" for k in EVALUATION_ADDITIONS}:  # records made before they were left out
        return []
    if recorded is None and key in PREDATED and PREDATED[key] in (None, current):
        return []
    return [(key, recorded, current)]


def current_settings(params: dict, m: dict) -> dict:
    """The settings params.yaml now resolves to for the number a metrics file records: an FID (a curve or guidance
    point: its checkpoint step, sampler steps and guidance scale), a classifier accuracy (at its guidance scale) or
    an autoencoder's held-out reconstructions (its settings)."""
    if "rfid" in m:
        return params["autoencoders"][m["autoencoder"]]
    exp = evaluation_point(
        resolve_experiment(params, m["experiment"]),
        m["training_steps"],
        m["sampler_steps"],
        m.get("guidance_scale"),
    )
    if "classifier_accuracy" in m:
        return accuracy_settings(params, exp)
    return stage_settings(exp, "fid")
