"""End to end: the smoke experiments through the whole DAG with Snakemake, then DVC agrees with it, the
Snakemake report shows every figure, and `uvit verify` traces every table cell (and catches tampering).

Runs once, in a temporary copy of the project (real digits data, real U-ViT training, real Inception FID);
the tests below share that run. Tests that change a file restore it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import (
    CORES,
    ROOT,
    job_rules,
    make_project_copy,
    project_env,
    run,
    set_params,
    write_emoji_package,
)

from uvit.config import load_params
from uvit.tables import table_metrics_files

SMOKE = ["smoke_pixel", "smoke_latent"]
SMOKE_TEXT = "smoke_text"  # a written emoji set, captions through MiniLM, a text-token U-ViT
pytestmark = pytest.mark.slow


def planned_jobs(project) -> set[str]:
    return job_rules(run(["snakemake", "-n", "--cores", CORES], project).stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_project_copy(tmp_path_factory.mktemp("smoke") / "project", targets=[*SMOKE, SMOKE_TEXT])
    write_emoji_package(project / "data" / "raw" / "emoji-mini", count=100)
    run(["snakemake", "--cores", CORES], project, timeout=1200)
    return project


@pytest.fixture(scope="module")
def dvc_plots(project) -> dict:
    """`dvc plots show --json` of the smoke run (one DVC start for the tests that read it)."""
    return json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)


def verify(project, check=True):
    return run(["uvit", "verify"], project, check=check)


def test_smoke_dag_end_to_end(project, dvc_plots):
    table = (project / "paper_tables" / "results.md").read_text()
    for name in SMOKE:
        metrics = json.loads((project / "metrics" / name / "fid.json").read_text())
        assert metrics["fid"] > 0 and metrics["fid_floor"] > 0 and metrics["num_samples"] == 8
        assert metrics["provenance"]["dirty"] is False and len(metrics["provenance"]["commit"]) == 40
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"{metrics['fid']:.2f}" in row and "demo" in row
        assert metrics["provenance"]["inputs"]["checkpoint"]["md5"][:8] in row
        for ext in ("png", "pdf"):
            assert (project / "paper_tables" / "figures" / f"{name}_samples.{ext}").stat().st_size > 0
    assert (project / "paper_tables" / "results.tex").read_text().count("smoke") == 3
    loss_csv = (project / "metrics" / "smoke_pixel" / "loss.csv").read_text().splitlines()
    assert loss_csv[0] == "step,loss,lr" and len(loss_csv) == 1 + 20 // 5  # steps 20, log_every 5
    assert "metrics/smoke_pixel/loss.csv" in json.dumps(dvc_plots)
    text = json.loads((project / "metrics" / SMOKE_TEXT / "fid.json").read_text())
    assert text["num_samples"] == 12 and text["fid"] > 0 and f"`{SMOKE_TEXT}`" in table
    contexts = json.loads((project / "data/text/emoji_mini/test/manifest.json").read_text())
    assert contexts["context_shape"] == [8, 384] and contexts["images"] == 15
    # smoke_latent draws a sample grid every 10 training steps (through the autoencoder).
    assert sorted(p.name for p in (project / "results" / "smoke_latent" / "progress").iterdir()) == [
        "step-0000010.png",
        "step-0000020.png",
    ]


def test_curves_over_training_and_sampler_steps(project, dvc_plots):
    """smoke_pixel keeps step 10 of 20 and evaluates 3 sampler steps besides its 5: both in tables."""
    point = json.loads((project / "metrics/smoke_pixel/curve/step10-sampler_steps5.json").read_text())
    assert point["training_steps"] == 10 and point["sampler_steps"] == 5
    assert point["provenance"]["inputs"]["checkpoint"]["path"].endswith("snapshots/nnet_ema-0000010.pth")
    fewer = json.loads((project / "metrics/smoke_pixel/curve/step20-sampler_steps3.json").read_text())
    assert fewer["training_steps"] == 20 and fewer["sampler_steps"] == 3
    final = json.loads((project / "metrics/smoke_pixel/fid.json").read_text())
    assert len({point["fid"], fewer["fid"], final["fid"]}) == 3
    training = (project / "paper_tables" / "training_steps.md").read_text()
    assert f"{point['fid']:.2f}" in training and f"{final['fid']:.2f}" in training
    sampler = (project / "paper_tables" / "sampler_steps.md").read_text()
    row = next(line for line in sampler.splitlines() if line.startswith("| 3 |"))
    assert f"{fewer['fid']:.2f}" in row
    assert next(line for line in sampler.splitlines() if line.startswith("| 4 |")).count("15.44") == 1
    for name in ("fid_over_training", "fid_over_sampler_steps", "loss_curves"):
        for ext in ("png", "pdf"):
            assert (project / "paper_tables" / "figures" / f"{name}.{ext}").stat().st_size > 1000
    # the numbers behind the FID figures, one CSV per experiment, overlaid by `dvc plots show`
    over_training = project / "paper_tables/figures/fid_over_training/smoke_pixel.csv"
    assert over_training.read_text().splitlines() == [
        "training_steps,fid,fid_floor",
        f"10,{point['fid']},{point['fid_floor']}",
        f"20,{final['fid']},{final['fid_floor']}",
    ]
    over_sampler = (project / "paper_tables/figures/fid_over_sampler_steps/smoke_pixel.csv").read_text()
    assert over_sampler.splitlines()[1:] == [
        f"3,{fewer['fid']},{fewer['fid_floor']}",
        f"5,{final['fid']},{final['fid_floor']}",
    ]
    values = dvc_plots["data"]["fid_over_training"][0]["content"]["data"]["values"]
    assert {(v["training_steps"], v["fid"]) for v in values} == {
        ("10", str(point["fid"])),
        ("20", str(final["fid"])),
    }


def test_guidance_sweep_and_classifier_accuracy(project):
    """smoke_latent samples guidance scale 1 besides its 0.4: samples, an FID and a classifier accuracy each, in
    guidance.md beside the classifier's own held-out accuracy; its results row shows the final accuracy."""
    import numpy as np
    from PIL import Image

    classifier = json.loads((project / "metrics/classifiers/digits_cnn.json").read_text())
    assert classifier["test_images"] == 297 and classifier["test_accuracy"] >= 0.5  # 10 classes: chance 0.1
    guidance = (project / "paper_tables" / "guidance.md").read_text()
    pixels = {}
    for label, scale in (("1", 1.0),):
        fid = json.loads((project / f"metrics/smoke_latent/guidance/scale{label}.json").read_text())
        accuracy = json.loads(
            (project / f"metrics/smoke_latent/guidance/scale{label}.accuracy.json").read_text()
        )
        folder = project / f"results/smoke_latent/guidance/scale{label}"
        assert json.loads((folder / "sampling.json").read_text())["guidance_scale"] == scale
        assert fid["guidance_scale"] == accuracy["guidance_scale"] == scale
        assert fid["num_samples"] == accuracy["num_samples"] == 8 and accuracy["classes"] == 10
        assert accuracy["classifier_test_accuracy"] == classifier["test_accuracy"]
        row = next(line for line in guidance.splitlines() if f"| {scale} |" in line)
        assert f"{fid['fid']:.2f}" in row and f"{100 * accuracy['classifier_accuracy']:.1f}%" in row
        pixels[scale] = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])
    final = json.loads((project / "metrics/smoke_latent/accuracy.json").read_text())
    drawn = project / "results/smoke_latent/samples"
    assert (
        json.loads((drawn / "sampling.json").read_text())["seed"]
        == json.loads((project / "results/smoke_latent/guidance/scale1/sampling.json").read_text())["seed"]
    )
    pixels[0.4] = np.stack([np.asarray(Image.open(p)) for p in sorted(drawn.glob("*.png"))])
    assert not np.array_equal(pixels[0.4], pixels[1.0])  # same seeds: the scale reached the sampler
    assert final["guidance_scale"] == 0.4 and "| 0.4 (final) |" in guidance
    table = (project / "paper_tables" / "results.md").read_text()
    row = next(line for line in table.splitlines() if "`smoke_latent`" in line)
    assert f"| {100 * final['classifier_accuracy']:.1f}% |" in row


def test_verify_names_a_tampered_accuracy_cell(project):
    path = project / "paper_tables" / "guidance.md"
    original = path.read_text()
    source = project / "metrics/smoke_latent/guidance/scale1.accuracy.json"
    cell = f"| {100 * json.loads(source.read_text())['classifier_accuracy']:.1f}% |"
    try:
        rows = original.split("\n")
        at = next(i for i, line in enumerate(rows) if "| 1.0 |" in line)
        rows[at] = rows[at].replace(cell, "| 99.9% |", 1)
        path.write_text("\n".join(rows))
        result = verify(project, check=False)
        assert result.returncode == 1
        assert (
            "paper_tables/guidance.md: row 2" in result.stderr
            and "column 'Classifier accuracy'" in result.stderr
        )
        assert "metrics/smoke_latent/guidance/scale1.accuracy.json gives" in result.stderr
    finally:
        path.write_text(original)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data):
        self.text.append(data)


def test_snakemake_report_has_every_figure_and_table(project):
    run(["snakemake", "--cores", "1", "--report", "report.html"], project, timeout=300)
    html = (project / "report.html").read_text()
    parser = _Collector()
    parser.feed(html)  # parses: a broken document raises or loses the text below
    for name in (
        "fid_over_training.png",
        "fid_over_sampler_steps.png",
        "loss_curves.png",
        "smoke_pixel_samples.png",
        "smoke_latent_samples.png",
        "results.md",
        "training_steps.md",
        "sampler_steps.md",
        "guidance.md",
    ):
        assert name in html, name


def test_verify_passes_on_the_pipeline_outputs(project):
    from uvit.tables import TABLE_BUILDERS

    out = verify(project).stderr
    assert f"verified {len(TABLE_BUILDERS)} tables" in out
    # smoke_pixel's curve point at step 10 samples a snapshot: traced through snapshots/' listing in the cache
    assert re.search(r"[1-9]\d* found in the directory's listing, 0 whose listing is not", out), out


def test_verify_names_a_tampered_table_cell(project):
    path = project / "paper_tables" / "results.md"
    original = path.read_text()
    fid = json.loads((project / "metrics/smoke_latent/fid.json").read_text())["fid"]
    try:
        path.write_text(original.replace(f"| {fid:.2f} |", f"| {fid - 0.01:.2f} |", 1))
        result = verify(project, check=False)
        assert result.returncode == 1
        assert "paper_tables/results.md: row" in result.stderr and "smoke_latent" in result.stderr
        assert "column 'Our FID'" in result.stderr and "metrics/smoke_latent/fid.json" in result.stderr
    finally:
        path.write_text(original)


def test_verify_names_the_cell_of_a_changed_checkpoint(project):
    path = project / "results" / "smoke_pixel" / "nnet_ema.pth"
    backup = path.with_suffix(".bak")
    shutil.copy(path, backup)
    try:
        path.unlink()  # DVC may link the file into its cache: replace, never write through
        path.write_bytes(backup.read_bytes() + b"\0")
        result = verify(project, check=False)
        assert result.returncode == 1
        assert "smoke_pixel" in result.stderr and "column 'Checkpoint'" in result.stderr
        assert "results/smoke_pixel/nnet_ema.pth in the workspace has md5" in result.stderr
    finally:
        path.unlink()
        backup.rename(path)


def dvc_changed(project) -> set[str]:
    """The stages of the targets' dvc.yaml that DVC finds changed."""
    return set(json.loads(run(["dvc", "status", "--json", "dvc.yaml"], project).stdout))


def lock_outputs(project) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in lock.values() for out in stage.get("outs", [])}


def test_both_engines_agree_and_reruns_are_minimal(project):
    """After the Snakemake run, neither engine has anything to do: dvc.lock recorded every stage it made."""
    assert planned_jobs(project) == set()
    assert dvc_changed(project) == set()


def test_lock_entries_of_stages_no_longer_defined_are_dropped(project):
    """A stage renamed or no longer asked for (a guidance scale taken out of the sweep): the recording step after a
    run drops its dvc.lock entry and leaves every other entry as DVC wrote it."""
    path = project / "dvc.lock"
    original = path.read_text()
    try:
        stale = original.replace(
            "stages:\n", "stages:\n  fid_guidance_point@gone-scale9:\n    cmd: uvit fid\n", 1
        )
        path.write_text(stale)
        out = run(["python", "-m", "uvit.dvclock", "--since", str(time.time())], project).stderr
        assert "dropped 1 entries of stages dvc.yaml no longer defines" in out
        assert path.read_text() == original
    finally:
        path.write_text(original)


def test_lock_entries_are_written_once_per_dvc_file_each_with_its_own_stages():
    """uvit.dvclock writes the stages it records with one dump per dvc.yaml (DVC's per-stage dump rewrites the
    whole lock file each time): the stages of dvc.yaml and of experiments/dvc.yaml each go to their own file's
    lock, in the order they were recorded."""
    from types import SimpleNamespace

    from uvit.dvclock import dump_lock_entries

    dumped = []

    def dvcfile(path):
        return SimpleNamespace(path=path, dump_stages=lambda stages, **kw: dumped.append((path, stages, kw)))

    top, papers = dvcfile("dvc.yaml"), dvcfile("experiments/dvc.yaml")
    stages = [SimpleNamespace(name=n, dvcfile=f) for n, f in (("a", top), ("p", papers), ("b", top))]
    dump_lock_entries(stages)
    assert [(path, [s.name for s in group], kw) for path, group, kw in dumped] == [
        ("dvc.yaml", ["a", "b"], {"update_pipeline": False}),
        ("experiments/dvc.yaml", ["p"], {"update_pipeline": False}),
    ]
    dumped.clear()
    dump_lock_entries([])
    assert dumped == []


def test_a_metrics_file_edited_by_hand_is_never_recorded(project):
    """Launder test: edit a number, run snakemake (the tables re-render from it): dvc.lock does not take the
    edit, `dvc status` shows it and `uvit verify` names the file."""
    path = project / "metrics" / "smoke_pixel" / "fid.json"
    keep = [path, project / "dvc.lock", *(project / "paper_tables").rglob("*.*")]
    backup = {p: p.read_bytes() for p in keep}
    times = {p: p.stat().st_mtime_ns for p in keep}
    try:
        metrics = json.loads(path.read_text())
        path.unlink()
        path.write_text(json.dumps(metrics | {"fid": metrics["fid"] - 1.0}, indent=2, sort_keys=True) + "\n")
        out = run(["snakemake", "--cores", CORES, "paper_tables/results.md"], project).stderr
        assert "not recorded: fid@smoke_pixel" in out and "not recorded: tables" in out
        assert {"fid@smoke_pixel", "tables"} <= dvc_changed(project)
        result = verify(project, check=False)
        assert result.returncode == 1
        assert (
            "metrics/smoke_pixel/fid.json is stale" in result.stderr and "column 'Our FID'" in result.stderr
        )
    finally:
        for p, data in backup.items():
            p.unlink(missing_ok=True)
            p.write_bytes(data)
            os.utime(p, ns=(times[p], times[p]))
    assert verify(project).returncode == 0


def test_verify_refuses_stale_settings_and_a_dirty_tree(project):
    path = project / "params.yaml"
    original = path.read_text()
    try:
        # smoke_pixel: the copy's quick tier, whose records the tables require (a full-tier record computed with
        # other settings is shown as 'not run' instead, and the table cell that still shows it is named)
        set_params(project, lambda p: p["experiments"]["smoke_pixel"]["sampling"].__setitem__("seed", 5))
        result = verify(project, check=False)
        assert result.returncode == 1
        assert "metrics/smoke_pixel/fid.json is stale: computed with sampling.seed = 0" in result.stderr
        assert "now resolves it to 5" in result.stderr and "snakemake --cores all" in result.stderr
    finally:
        path.write_text(original)
    metrics_path = project / "metrics" / "smoke_latent" / "fid.json"
    original = metrics_path.read_text()
    tables = {p: p.read_text() for p in (project / "paper_tables").glob("*.*")}
    try:
        metrics = json.loads(original)
        metrics["provenance"]["dirty"] = True
        metrics_path.unlink()
        metrics_path.write_text(json.dumps(metrics, indent=2))
        files = table_metrics_files(load_params(project / "params.yaml"))
        run(["uvit", "tables", "--metrics", *files, "--out-dir", "paper_tables"], project)
        result = verify(project, check=False)
        assert (
            result.returncode == 1
            and "metrics/smoke_latent/fid.json was computed from a dirty tree" in result.stderr
        )
    finally:
        metrics_path.unlink()
        metrics_path.write_text(original)
        for p, text in tables.items():
            p.write_text(text)


def test_dvc_repro_from_scratch_gives_snakemakes_hashes_and_push_pull_restores(project, tmp_path):
    """A fresh clone: `dvc repro` of smoke_pixel's training and sampling from nothing gives the bytes
    Snakemake gave; another clone restores every artifact with `dvc pull` from the local remote."""
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke run"], project)
    scratch = project.parent / "scratch"
    run(["git", "clone", "-q", str(project), str(scratch)], tmp_path)
    (scratch / "dvc.lock").unlink()
    out = run(["dvc", "repro", "sample@smoke_pixel"], scratch, timeout=600).stdout
    assert "Running stage 'train@smoke_pixel'" in out
    ours, theirs = lock_outputs(scratch), lock_outputs(project)
    for path in ("data/prepared/digits", "results/smoke_pixel/nnet_ema.pth", "results/smoke_pixel/samples"):
        assert ours[path] == theirs[path], path

    run(["dvc", "push", "dvc.yaml"], project)  # the targets' artifacts (paper rows never ran here)
    clone = project.parent / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "dvc.yaml"], clone)
    assert dvc_changed(clone) == set()
    assert (clone / "results/smoke_latent/nnet_ema.pth").read_bytes() == (
        project / "results/smoke_latent/nnet_ema.pth"
    ).read_bytes()


def shown_experiments(shown) -> list[dict]:
    """The records of `dvc exp show --json` (the workspace's, each commit's and each experiment's)."""
    if isinstance(shown, dict):
        found = [shown] if {"rev", "params", "metrics"} <= shown.keys() else []
        return found + [r for value in shown.values() for r in shown_experiments(value)]
    return [r for value in shown for r in shown_experiments(value)] if isinstance(shown, list) else []


def test_a_sampling_key_reruns_sampling_not_training_under_both_engines(project):
    """The same key (left to its default in params.yaml) through both engines: Snakemake's dry run plans sampling,
    FID and the report, not training; a run killed after some of its jobs finished never records them
    (Snakemake's onsuccess never comes), and the next run records what those jobs made when it is an up-to-date
    output of its DAG that a finished job wrote (Snakemake's metadata), so dvc.lock does not stay behind (an output
    edited since stays unrecorded: above). Then `dvc exp run -S` of the tables reruns exactly sampling, FID and
    tables, and `dvc exp show` lists the experiment with its FID. Last: leaves the project at the experiment's
    settings."""
    path, original = project / "params.yaml", (project / "params.yaml").read_text()
    # smoke_text: its sampling seed reaches its samples, FID and the report (smoke_pixel's, its curves as well)
    set_params(project, lambda p: p["experiments"]["smoke_text"]["sampling"].__setitem__("seed", 3))
    assert planned_jobs(project) == {"sample", "fid", "sample_grid", "figures", "tables", "all"}
    samples, fid = "results/smoke_text/samples", "metrics/smoke_text/fid.json"
    killed = project_env() | {"UVIT_SKIP_DVC_COMMIT": "1"}  # its jobs finish; it never records them
    subprocess.run(["snakemake", "--cores", CORES, samples], cwd=project, env=killed, check=True)
    assert "sample@smoke_text" in dvc_changed(project)
    out = run(["snakemake", "--cores", CORES, fid], project).stderr
    assert job_rules(out) and "sample" not in job_rules(out)
    assert "not recorded: sample@smoke_text" not in out and "not recorded: fid@smoke_text" not in out
    assert not {"sample@smoke_text", "fid@smoke_text"} & dvc_changed(project)

    path.write_text(original)
    run(["git", "add", "-A"], project)  # committed, as a user would before trying a setting
    run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke run", "--allow-empty"],
        project,
    )
    # `+`: a key params.yaml leaves to its default (Hydra's syntax, which `dvc exp run -S` takes)
    out = run(
        ["dvc", "exp", "run", "-S", "+experiments.smoke_text.sampling.seed=2", "tables"], project
    ).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"settings", "sample@smoke_text", "fid@smoke_text", "tables"}, out
    fid = json.loads((project / "metrics/smoke_text/fid.scores.json").read_text())["fid"]
    shown = shown_experiments(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    params = [r["params"]["params.yaml"]["data"]["experiments"]["smoke_text"]["sampling"] for r in shown]
    scores = [
        (r.get("metrics") or {}).get("metrics/smoke_text/fid.scores.json", {}).get("data", {}) for r in shown
    ]
    assert any(
        r["rev"] != "workspace" and p.get("seed") == 2 and m.get("fid") == fid
        for r, p, m in zip(shown, params, scores, strict=True)
    )
    # `make experiments`: a handful of columns, the scores and the changed key (not every key and hash)
    table = run(["make", "-s", "-f", str(ROOT / "Makefile"), "experiments", "ARGS=--csv"], project).stdout
    header, *rows = table.splitlines()
    assert header.split(",") == [
        "Experiment",
        "Created",
        *(f"metrics/smoke_text/fid.scores.json:{k}" for k in ("fid", "kid", "sfid")),
        "experiments.smoke_text.sampling.seed",
    ]
    assert any(row.endswith(",2") and f",{fid}," in row for row in rows), table


def test_a_killed_run_never_leaves_an_older_result_current(project, tmp_path):
    """Last (it leaves smoke_pixel at other settings): change smoke_pixel's training (64 steps of cosine decay
    instead of 20 at a constant rate: another trajectory), SIGKILL its training job after its checkpoint of step
    16, run the same command again: it trains on from that checkpoint (the smoke run's checkpoints of steps 10
    and 20 neither resume it nor displace its own) and every output is the current settings' (never 'Nothing to
    be done' over the smoke run's FID), and the weights equal an uninterrupted run's bit for bit. dvc.lock is
    not recorded (the test above has it)."""
    target = "metrics/smoke_pixel/fid.json"
    command = ["snakemake", "--cores", CORES, target]
    env = project_env() | {"UVIT_SKIP_DVC_COMMIT": "1"}
    old_fid = json.loads((project / target).read_text())
    assert old_fid["training_steps"] == 20
    checkpoints = project / "results/smoke_pixel/checkpoints"
    assert sorted(p.name for p in checkpoints.glob("ckpt-*.pt")) == ["ckpt-0000010.pt", "ckpt-0000020.pt"]

    newer = {"steps": 64, "checkpoint_every": 8, "log_every": 8, "lr_schedule": "cosine", "keep_steps": []}
    set_params(project, lambda p: p["experiments"]["smoke_pixel"]["training"].update(newer))
    job = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not (checkpoints / "ckpt-0000016.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, "training ended before it was killed"
        time.sleep(0.05)
    trainers = run(["pgrep", "-f", "train --experiment smoke_pixel"], project, check=False).stdout.split()
    for pid in trainers:  # this project's (another test's training may be running beside it)
        if Path(f"/proc/{pid}/cwd").resolve() == project.resolve():
            os.kill(int(pid), signal.SIGKILL)
    job.wait(timeout=120)
    assert job.returncode != 0
    assert sorted(p.name for p in checkpoints.glob("ckpt-*.pt"))[-1] == "ckpt-0000016.pt"

    again = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" not in again.stdout + again.stderr
    log = (project / "logs/train/smoke_pixel.log").read_text()
    resumed = f"resuming from {Path('results/smoke_pixel/checkpoints/ckpt-0000016.pt')} (step 16)"
    assert resumed in log, log[-2000:]
    fid = json.loads((project / target).read_text())
    assert fid["training_steps"] == 64 and fid["fid"] != old_fid["fid"]

    straight = tmp_path / "straight"
    train = ["uvit", "train", "--experiment", "smoke_pixel", "--data", "data/prepared/digits"]
    run([*train, "--out", str(straight), "--metrics", str(straight / "train.json")], project, timeout=900)
    weights = (project / "results/smoke_pixel/nnet_ema.pth").read_bytes()
    assert weights == (straight / "nnet_ema.pth").read_bytes()
    assert fid["provenance"]["inputs"]["checkpoint"]["md5"] == hashlib.md5(weights).hexdigest()
