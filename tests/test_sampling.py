"""The sampling stage: per-seed files, sharding over processes, SIGKILL and resume, the ADM .npz layout."""

from __future__ import annotations

import copy
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import load_test_params, project_params, record
from PIL import Image

from uvit.config import resolve_experiment
from uvit.data import prepare_dataset
from uvit.sampling import export_npz, sample_experiment
from uvit.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Prepared digits and a smoke_pixel model trained for 5 steps."""
    root = tmp_path_factory.mktemp("sampling")
    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, root / "data")
    exp = copy.deepcopy(resolve_experiment(load_test_params(), "smoke_pixel"))  # a mutable copy
    exp["training"].update(steps=5, checkpoint_every=5)
    train(record(exp), root / "data", root / "run", log=lambda m: None)
    return root / "data", root / "run" / "nnet_ema.pth"


def experiment(**sampling) -> dict:
    exp = copy.deepcopy(resolve_experiment(load_test_params(), "smoke_pixel"))  # a mutable copy
    exp["sampling"].update(sampling)
    return record(exp)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_processes_split_the_samples_without_changing_them(trained, tmp_path, monkeypatch):
    data, model = trained
    exp = experiment(num_samples=10, batch_size=4, steps=3)
    sample_experiment(exp, model, data, tmp_path / "one", log=lambda m: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        sample_experiment(exp, model, data, tmp_path / "two", log=lambda m: None)
    assert len(folder_bytes(tmp_path / "one")) == 10
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")


def test_sigkill_during_sampling_then_resume_gives_the_same_files(trained, tmp_path):
    data, model = trained
    params = project_params(tmp_path, sampling={"num_samples": 400, "batch_size": 8, "steps": 12})

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "uvit.cli", "--params", str(params), "--threads", "1", "sample",
            "--experiment", "smoke_pixel", "--model", str(model), "--data", str(data), "--out", str(out),
        ]  # fmt: skip

    started = time.perf_counter()
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    duration = time.perf_counter() - started
    rng, kills = random.Random(1), 0
    for _ in range(2):
        process = subprocess.Popen(command(tmp_path / "killed"), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.6) * duration)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1
    subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True)
    assert folder_bytes(tmp_path / "killed") == folder_bytes(tmp_path / "straight")
    assert not list((tmp_path / "killed").glob(".*"))  # no temporary files left behind


def test_npz_export_has_the_adm_layout(trained, tmp_path):
    data, model = trained
    sample_experiment(
        experiment(num_samples=6, batch_size=6, steps=2), model, data, tmp_path / "s", log=lambda m: None
    )
    assert export_npz(tmp_path / "s", tmp_path / "samples.npz") == 6
    with np.load(tmp_path / "samples.npz") as npz:
        assert npz.files == ["arr_0"]
        arr = npz["arr_0"]
    assert arr.shape == (6, 16, 16, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(
        arr[4], np.asarray(Image.open(tmp_path / "s" / "000004.png").convert("RGB"))
    )
