"""params.yaml validation: every wrong value stops the run with a one-line message naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT, make_project_copy, raw_test_params, run, set_params

from uvit.config import (
    ConfigError,
    check_references,
    evaluation_point,
    expand_ablations,
    load_params,
    resolve_experiment,
    validate_against_schema,
)

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
RAW = raw_test_params()  # params.yaml with the tests' experiments


def check(edit) -> str:
    params = copy.deepcopy(RAW)
    edit(params)
    with pytest.raises(ConfigError) as err:
        validate_against_schema(params, SCHEMA)
        expand_ablations(params)
        check_references(params)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_committed_params_are_valid(params):
    for name in params["experiments"]:
        exp = resolve_experiment(params, name)
        assert exp["name"] == name and exp["model"]["embed_dim"] > 0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda p: p["defaults"]["training"].__setitem__("lrr", 1e-4),
            "defaults.training: unknown key 'lrr'",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"]["training"].__setitem__("lr", "fast"),
            "experiments.fmnist_pixel.training.lr: 'fast' is not of type 'number'",
        ),
        (
            lambda p: p["defaults"]["sampling"].__setitem__("sampler", "ddpm"),
            "defaults.sampling.sampler: 'ddpm' is not one of",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].__setitem__("dataset", "mnist"),
            "experiments.fmnist_pixel.dataset: unknown dataset 'mnist'",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].setdefault("model", {}).__setitem__("patch_size", 3),
            "experiments.fmnist_pixel.model.patch_size: 3 does not divide",
        ),
        (
            lambda p: (
                p["experiments"]["fmnist_pixel"].setdefault("model", {}).__setitem__("name", "U-ViT-XL/2")
            ),
            "experiments.fmnist_pixel.model.name: unknown model 'U-ViT-XL/2'",
        ),
        (
            lambda p: (
                p["experiments"]["fmnist_pixel"].setdefault("sampling", {}).__setitem__("guidance_scale", 1.0)
            ),
            "experiments.fmnist_pixel.sampling.guidance_scale: guidance needs",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"].__setitem__("autoencoder", "sd_vae"),
            "experiments.fmnist_latent.autoencoder: latent experiments need",
        ),
        (
            lambda p: p.__setitem__("targets", ["fmnist_pixel", "nope"]),
            "targets.1: unknown experiment 'nope'",
        ),
        (
            lambda p: p["defaults"]["training"].__setitem__("betas", [0.9]),
            "defaults.training.betas: [0.9] is too short",
        ),
        (lambda p: p["defaults"]["training"].pop("seed"), "'seed' is a required property"),
        (
            lambda p: p["experiments"]["fmnist_pixel"].setdefault("model", {}).__setitem__("depth", 8),
            "experiments.fmnist_pixel.model.depth: must be odd",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].setdefault("model", {}).__setitem__("skip", "concat"),
            "experiments.fmnist_pixel.model.skip: 'concat' is not one of 'concat_linear', 'add'",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].__setitem__(
                "model", {"pos_embed": "sinusoidal_2d", "embed_dim": 190, "num_heads": 2}
            ),
            "experiments.fmnist_pixel.model.pos_embed: sinusoidal_2d needs embed_dim divisible by 4",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].__setitem__("sampling", {"sampler": "dpm_solver_pp"}),
            "experiments.fmnist_pixel.sampling.sampler: dpm_solver_pp does not run on diffusion.schedule 'vp_linear'",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"].__setitem__("diffusion", {"schedule": "cosine"}),
            "experiments.fmnist_pixel.diffusion.schedule: 'cosine' is not one of",
        ),
        (
            lambda p: p["experiments"]["fmnist_pixel"]["training"].__setitem__("keep_steps", [125, 500]),
            "experiments.fmnist_pixel.training.keep_steps.1: 500 is not before the last step (500)",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["evaluation"].__setitem__("sampler_steps", [5, 5]),
            "experiments.fmnist_latent.evaluation.sampler_steps: [5, 5] has non-unique elements",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["evaluation"].__setitem__("guidance_scales", [0, -1]),
            "experiments.fmnist_latent.evaluation.guidance_scales.1: -1 is less than the minimum of 0; give a "
            "number >= 0",
        ),
        (
            lambda p: (
                p["experiments"]["fmnist_pixel"]
                .setdefault("evaluation", {})
                .__setitem__("guidance_scales", [0, 1])
            ),
            "experiments.fmnist_pixel.evaluation.guidance_scales: [0, 1] needs condition: class or text and "
            "training.cond_drop_prob > 0 (this experiment: condition none, cond_drop_prob 0.0); set "
            "evaluation.guidance_scales: [] or train the experiment for guidance",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["training"].__setitem__("cond_drop_prob", 0.0),
            "experiments.fmnist_latent.sampling.guidance_scale: guidance needs",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["training"].__setitem__("hflip", True),
            "experiments.fmnist_latent.training.hflip: true needs the flipped latents, which autoencoders.fmnist_kl "
            "does not encode (encode_flips: false); set training.hflip: false or encode_flips: true",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["training"].__setitem__("lr_schedule", "linear"),
            "experiments.fmnist_latent.training.lr_schedule: 'linear' is not one of 'constant', 'cosine'",
        ),
        (
            lambda p: (
                p["experiments"]["fmnist_pixel"]
                .setdefault("evaluation", {})
                .__setitem__("classifier", "fmnist_cnn")
            ),
            "experiments.fmnist_pixel.evaluation.classifier: scores samples by the class they were drawn for, and "
            "this experiment has condition: none; set evaluation.classifier: null",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["evaluation"].__setitem__("classifier", "cnn"),
            "experiments.fmnist_latent.evaluation.classifier: unknown classifier 'cnn' (under `classifiers`: "
            "fmnist_cnn, digits_cnn)",
        ),
        (
            lambda p: p["experiments"]["fmnist_latent"]["evaluation"].__setitem__("classifier", "digits_cnn"),
            "experiments.fmnist_latent.evaluation.classifier: 'digits_cnn' is trained on dataset 'digits'",
        ),
        (
            lambda p: p["classifiers"]["fmnist_cnn"].__setitem__("test_split", "train"),
            "classifiers.fmnist_cnn.test_split: 'train' is not one of 'test', 'val'",
        ),
        (
            lambda p: p["classifiers"]["fmnist_cnn"].__setitem__("dataset", "mnist"),
            "classifiers.fmnist_cnn.dataset: unknown dataset 'mnist'",
        ),
        # An ablation grid's seeds: a list of distinct integers >= 0.
        (
            lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", [0, 1, 0]),
            "ablations.skip_demo.seeds: [0, 1, 0] has non-unique elements",
        ),
        (
            lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", 3),
            "ablations.skip_demo.seeds: 3 is not of type 'array'",
        ),
        (
            lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", [0, "1"]),
            "ablations.skip_demo.seeds.1: '1' is not of type 'integer'",
        ),
        (
            lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", [0, 1.0]),
            "ablations.skip_demo.seeds.1: 1.0 is not an integer",
        ),
        (
            lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", [-1]),
            "ablations.skip_demo.seeds.0: -1 is less than the minimum of 0",
        ),
        (lambda p: p["ablations"]["skip_demo"].__setitem__("seeds", []), "ablations.skip_demo.seeds: []"),
    ],
)
def test_bad_values_name_the_key(edit, expected):
    assert expected in check(edit)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("targets: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml", schema_path=ROOT / "workflow/schemas/params.schema.yaml")


def test_zoo_name_overrides_free_settings(params):
    exp = resolve_experiment(params, "cifar10_uvit_s2")
    assert (exp["model"]["embed_dim"], exp["model"]["depth"], exp["model"]["patch_size"]) == (512, 13, 2)


def test_snakemake_refuses_bad_params_before_any_work(tmp_path):
    project = make_project_copy(tmp_path / "p")
    set_params(project, lambda p: p["defaults"]["sampling"].__setitem__("steps", 0))
    result = run(["snakemake", "-n", "--cores", "1"], project, check=False)
    assert result.returncode != 0
    assert "defaults.sampling.steps: 0 is less than the minimum of 1" in result.stdout + result.stderr
    assert not (project / "data").exists()


def test_curve_points_list_kept_checkpoints_then_other_sampler_steps(params):
    from uvit.config import curve_points, fid_metrics_paths, resolve_experiment

    exp = copy.deepcopy(resolve_experiment(params, "fmnist_pixel"))  # a mutable copy
    exp["training"]["keep_steps"] = [250, 125]
    exp["evaluation"]["sampler_steps"] = [50, 10, 25]  # 25 is sampling.steps: the final FID already has it
    assert curve_points(exp) == [(125, 25), (250, 25), (500, 10), (500, 50)]
    assert fid_metrics_paths(params, "smoke_pixel") == [
        "metrics/smoke_pixel/fid.json",
        "metrics/smoke_pixel/curve/step10-sampler_steps5.json",
        "metrics/smoke_pixel/curve/step20-sampler_steps3.json",
    ]


def test_guidance_points_list_the_other_scales_and_their_records(params):
    """Each scale of evaluation.guidance_scales but sampling.guidance_scale's (the final FID has it), increasing,
    named by the shortest text that reads back as the same float; FID records first, then accuracies, then the
    trained autoencoder's held-out record."""
    from uvit.config import guidance_label, guidance_points, metrics_paths, resolve_experiment

    exp = copy.deepcopy(resolve_experiment(params, "smoke_latent"))  # a mutable copy
    exp["evaluation"]["guidance_scales"] = [1.5, 0.4, 0, 0.1 + 0.2]  # 0.4 is sampling.guidance_scale
    assert guidance_points(exp) == [0.0, 0.1 + 0.2, 1.5]
    assert [guidance_label(s) for s in guidance_points(exp)] == ["0", "0.30000000000000004", "1.5"]
    assert all(float(guidance_label(s)) == s for s in (0.0, 0.4, 2.0, 1e-5, 0.1 + 0.2))
    assert metrics_paths(params, "smoke_latent") == [
        "metrics/smoke_latent/fid.json",
        "metrics/smoke_latent/guidance/scale1.json",
        "metrics/smoke_latent/accuracy.json",
        "metrics/smoke_latent/guidance/scale1.accuracy.json",
        "metrics/autoencoders/digits_kl.json",
    ]
    assert metrics_paths(params, "smoke_text") == ["metrics/smoke_text/fid.json"]  # no classifier, no sweep


SKIPS = ("concat_linear", "add", "add_linear_skip", "linear_of_sum", "none")


def test_ablation_grids_expand_into_one_experiment_per_value_and_seed(params):
    """skip_demo declares seeds [0, 1, 2]: each value runs three times, the training and sampling seeds the
    base's plus the grid's seed (seed 0 is the base's own run), everything else the base's."""
    from uvit.config import grid_experiments

    names = grid_experiments(params, "skip_demo")
    assert names == [f"skip_demo__skip_{v}__seed{s}" for v in SKIPS for s in (0, 1, 2)]
    assert params["target_grids"] == ["skip_demo"] and set(names) <= set(params["targets"])
    base = resolve_experiment(params, "fmnist_ablation")
    for name in names:
        exp = resolve_experiment(params, name)
        value, seed = exp["ablation"]["value"], exp["ablation"]["seed"]
        assert name == f"skip_demo__skip_{value}__seed{seed}" and exp["ablation"]["grid"] == "skip_demo"
        assert exp["model"] == base["model"] | {"skip": value}
        assert exp["training"] == base["training"] | {"seed": base["training"]["seed"] + seed}
        assert exp["sampling"] == base["sampling"] | {"seed": base["sampling"]["seed"] + seed}
    depth = resolve_experiment(params, "cifar10_section31__depth_17__seed2")
    assert depth["model"]["depth"] == 17 and depth["model"]["embed_dim"] == 512  # U-ViT-S/2, deeper
    assert (
        len(grid_experiments(params, "cifar10_section31")) == 3 * 25
    )  # the paper's grid: 25 values, 3 seeds


def test_a_grids_seed_reaches_the_training_and_sampling_jobs(params):
    """What the rules and DVC stages hand `uvit train` / `uvit sample` (their settings records) differs between
    two seeds of a value exactly in training.seed and sampling.seed."""
    from uvit.stages import Lineage

    lineage = Lineage(params)
    one, two = (f"skip_demo__skip_add__seed{s}" for s in (1, 2))
    for rule, section in (("train", "training"), ("sample", "sampling")):
        a, b = lineage.settings(rule, experiment=one), lineage.settings(rule, experiment=two)
        assert b[section]["seed"] == a[section]["seed"] + 1
        assert {**b, section: {**b[section], "seed": None}} == {**a, section: {**a[section], "seed": None}}
        assert lineage(rule, experiment=one) != lineage(rule, experiment=two)


def test_a_grid_without_seeds_runs_each_value_once_under_its_plain_name(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    line = "    seeds: [0, 1, 2]\n"
    assert text.count(line) == 2
    params = load_params(write_params(tmp_path, text.replace(line, "", 1)))
    from uvit.config import grid_experiments

    assert grid_experiments(params, "skip_demo") == [f"skip_demo__skip_{v}" for v in SKIPS]
    exp, base = (
        resolve_experiment(params, "skip_demo__skip_add"),
        resolve_experiment(params, "fmnist_ablation"),
    )
    assert exp["ablation"]["seed"] is None and exp["training"] == base["training"]
    assert exp["sampling"] == base["sampling"]


def write_params(tmp_path, text: str):
    (tmp_path / "workflow" / "schemas").mkdir(parents=True, exist_ok=True)
    schema = (ROOT / "workflow/schemas/params.schema.yaml").read_text()
    (tmp_path / "workflow/schemas/params.schema.yaml").write_text(schema)
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_adding_an_ablation_value_is_one_line(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    line = "      depth: [9, 13, 17]\n"
    assert text.count(line) == 1
    params = load_params(write_params(tmp_path, text.replace(line, "      depth: [9, 13, 17, 21]\n")))
    exp = resolve_experiment(params, "cifar10_section31__depth_21__seed0")
    assert exp["model"]["depth"] == 21 and exp["ablation"]["value"] == 21


def test_a_bad_ablation_value_or_base_is_named(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    bad_value = text.replace("linear_of_sum, none]", "linear_of_sum, none, concat]", 1)
    with pytest.raises(
        ConfigError,
        match=r"ablations\.skip_demo\.axes\.skip \(value 'concat', experiment skip_demo__skip_concat__seed\d\)",
    ):
        load_params(write_params(tmp_path, bad_value))
    bad_base = text.replace("base: fmnist_ablation", "base: fmnist_ablate")
    with pytest.raises(ConfigError, match=r"ablations\.skip_demo\.base: unknown experiment 'fmnist_ablate'"):
        load_params(write_params(tmp_path, bad_base))


def test_a_resolved_experiment_is_read_only_and_a_variant_is_a_new_record(params):
    """What reads an experiment cannot change it for the next reader; evaluation_point builds a new record."""
    import pickle

    exp = resolve_experiment(params, "fmnist_latent")
    for edit in (
        lambda: exp.__setitem__("name", "x"),
        lambda: exp["training"].__setitem__("steps", 1),
        lambda: exp["sampling"].update(steps=1),
        lambda: exp["model"].pop("depth"),
    ):
        with pytest.raises(TypeError, match=r"^a resolved experiment is read-only; build a variant with"):
            edit()
    point = evaluation_point(exp, training_step=100, sampler_steps=5, guidance_scale=0)
    assert (point["training"]["steps"], point["sampling"]["steps"], point["sampling"]["guidance_scale"]) == (
        100,
        5,
        0,
    )
    assert exp == resolve_experiment(params, "fmnist_latent") and exp["sampling"]["steps"] == 20
    with pytest.raises(TypeError):
        point["sampling"]["steps"] = 6
    written = params["experiments"]["fmnist_latent"]["training"]["steps"]
    mutable = copy.deepcopy(exp)  # tests and benchmarks try settings on a plain copy
    mutable["training"]["steps"] = written + 1
    assert type(mutable) is dict and exp["training"]["steps"] == written
    assert pickle.loads(pickle.dumps(exp)) == exp  # DataLoader workers receive it pickled


def test_a_record_carries_what_its_settings_derive_and_a_plain_copy_does_not(params):
    """Derived values are worked out once, at resolution (input size, latent shape and scale, guidance and the
    null class); a plain copy drops them, so settings edited afterwards never meet values derived before."""
    from uvit.config import experiment_record

    latent, pixel = resolve_experiment(params, "fmnist_latent"), resolve_experiment(params, "fmnist_pixel")
    # Fashion-MNIST 32 px through 2x2 space-to-depth and two blocks: 8x8 latents of 4 channels, scale measured.
    assert latent["derived"] == {
        "input_size": 8,
        "latent_shape": [4, 8, 8],
        "latent_scale_factor": None,
        "guidable": True,
        "null_class": True,
    }
    assert pixel["derived"] == {
        "input_size": 32,
        "latent_shape": None,
        "latent_scale_factor": None,
        "guidable": False,
        "null_class": False,
    }
    h2 = resolve_experiment(params, "imagenet256_uvit_h2")["derived"]
    assert (h2["input_size"], h2["latent_shape"], h2["latent_scale_factor"]) == (32, [4, 32, 32], 0.18215)
    text = resolve_experiment(params, "smoke_text")["derived"]
    assert text["guidable"] and not text["null_class"]  # its null condition is the empty caption's encoding

    mutable = copy.deepcopy(latent)
    assert "derived" not in mutable and "derived" not in latent | {"name": "x"}
    mutable["training"]["cond_drop_prob"] = 0.0
    again = experiment_record(params, mutable)
    assert (again["derived"]["guidable"], again["derived"]["null_class"]) == (False, False)
    assert evaluation_point(latent, guidance_scale=0)["derived"] == latent["derived"]
