"""Figures: both files written and readable, byte-deterministic, exact grid pixels, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uvit.figures import (
    DPI,
    PANEL_SIZE,
    ablation_comparison,
    fid_over_sampler_steps,
    fid_over_training,
    loss_curves,
    sample_grid,
    write_curve_data,
)

PAPER = {
    "U-ViT-H/2": {4: 15.44, 5: 4.64, 10: 3.18, 15: 2.92, 20: 2.53},
    "LDM": {4: 34.48, 5: 12.73, 10: 4.51, 15: 3.87, 20: 3.68},
}


def fid_point(experiment: str, fid: float, training_steps: int = 500, sampler_steps: int = 25) -> dict:
    return {
        "experiment": experiment,
        "fid": fid,
        "fid_floor": 21.61,
        "training_steps": training_steps,
        "sampler": "dpm_solver",
        "sampler_steps": sampler_steps,
        "num_samples": 1000,
        "guidance_scale": 0.0,
        "scale": "demo",
    }


def over_training(experiment: str, fids: list[float]) -> list[dict]:
    # Deliberately unsorted steps: the figure sorts them.
    steps = [1000, 250, 500, 750][: len(fids)]
    return [fid_point(experiment, fid, training_steps=s) for fid, s in zip(fids, steps, strict=True)]


def assert_written(paths: list[Path], stem: Path, min_width: int = 300) -> None:
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG"
        assert image.width >= min_width
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert not list(stem.parent.glob(".*.tmp"))  # no temporary files left behind


def write_solid_pngs(folder: Path, colours: list[tuple[int, int, int]], size: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, colour in enumerate(colours):
        Image.new("RGB", (size, size), colour).save(folder / f"{k:06d}.png")


def write_loss_csv(path: Path, header: str = "step,loss,lr") -> Path:
    rows = [f"{50 * i},{1 / i:.4f},0.002" for i in range(1, 11)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------
# sample_grid
# --------------------------------------------------------------------------------------------------------

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]


def test_sample_grid_pixels(tmp_path):
    write_solid_pngs(tmp_path / "samples", COLOURS, size=4)
    stem = tmp_path / "new" / "dir" / "grid"  # parent created on demand
    paths = sample_grid(tmp_path / "samples", stem, rows=2, cols=2)
    assert_written(paths, stem, min_width=256)

    grid = np.asarray(Image.open(paths[0]).convert("RGB"))
    side = 2 * (4 + 2) + 2  # two 4-px cells with 2-px borders
    scale = math.ceil(256 / side)
    assert grid.shape == (side * scale, side * scale, 3)
    for k, colour in enumerate(COLOURS):
        r, c = divmod(k, 2)
        top, left = (2 + r * 6) * scale, (2 + c * 6) * scale
        cell = grid[top : top + 4 * scale, left : left + 4 * scale]
        assert (cell == colour).all(), f"cell {k}"
    white = np.ones(grid.shape[:2], dtype=bool)
    for r in range(2):
        for c in range(2):
            top, left = (2 + r * 6) * scale, (2 + c * 6) * scale
            white[top : top + 4 * scale, left : left + 4 * scale] = False
    assert (grid[white] == 255).all()  # every border pixel (outer and between cells) is white
    assert white[: 2 * scale].all() and white[:, (6 * scale) : (8 * scale)].all()


def test_sample_grid_first_files_and_white_padding(tmp_path):
    # 3 samples for a 2 x 2 grid: the last cell stays white; extra files beyond rows*cols are ignored.
    write_solid_pngs(tmp_path / "samples", COLOURS[:3], size=4)
    grid = np.asarray(Image.open(sample_grid(tmp_path / "samples", tmp_path / "g", rows=2, cols=2)[0]))
    scale = math.ceil(256 / 14)
    assert (grid[8 * scale : 12 * scale, 8 * scale : 12 * scale] == 255).all()
    grid = np.asarray(Image.open(sample_grid(tmp_path / "samples", tmp_path / "g1", rows=1, cols=1)[0]))
    assert grid.shape[:2] == (256, 256)  # one 4-px cell + borders = 8 px, scaled by 32
    assert (grid[128, 128] == COLOURS[0]).all() and (grid[0, 0] == 255).all()


def test_sample_grid_deterministic(tmp_path):
    write_solid_pngs(tmp_path / "samples", COLOURS, size=8)
    first = [p.read_bytes() for p in sample_grid(tmp_path / "samples", tmp_path / "a", rows=2, cols=2)]
    second = [p.read_bytes() for p in sample_grid(tmp_path / "samples", tmp_path / "b", rows=2, cols=2)]
    assert first == second


def test_sample_grid_no_pngs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        sample_grid(tmp_path / "empty", tmp_path / "grid")


def test_stem_with_suffix_rejected(tmp_path):
    write_solid_pngs(tmp_path / "samples", COLOURS[:1])
    with pytest.raises(ValueError, match="without a suffix"):
        sample_grid(tmp_path / "samples", tmp_path / "grid.png")


# --------------------------------------------------------------------------------------------------------
# FID figures
# --------------------------------------------------------------------------------------------------------


def test_fid_over_training_writes_and_is_deterministic(tmp_path):
    points = {
        "pixel": over_training("fmnist_pixel", [309.8, 120.0, 80.5, 60.2]),
        "latent": over_training("fmnist_latent", [250.0, 90.0]),
    }
    first = fid_over_training(points, tmp_path / "figures" / "fid_training")
    assert_written(first, tmp_path / "figures" / "fid_training")
    first_bytes = [p.read_bytes() for p in first]
    second = fid_over_training(points, tmp_path / "again" / "fid_training")
    assert [p.read_bytes() for p in second] == first_bytes
    # Different data gives a different figure (the check above is not vacuous).
    points["pixel"][0]["fid"] = 10.0
    third = fid_over_training(points, tmp_path / "changed" / "fid_training")
    assert third[0].read_bytes() != first_bytes[0]


@pytest.mark.parametrize("points", [{}, {"pixel": []}])
def test_fid_over_training_empty(tmp_path, points):
    with pytest.raises(ValueError, match="fid_over_training: no points for any experiment"):
        fid_over_training(points, tmp_path / "fid")


def test_fid_over_training_missing_key(tmp_path):
    point = fid_point("fmnist_pixel", 300.0)
    del point["training_steps"]
    with pytest.raises(ValueError, match=r"pixel.*training_steps"):
        fid_over_training({"pixel": [point]}, tmp_path / "fid")


def test_fid_over_sampler_steps(tmp_path):
    ours = {"latent": [fid_point("fmnist_latent", f, sampler_steps=s) for s, f in [(25, 80.0), (10, 120.0)]]}
    stem = tmp_path / "fid_steps"
    paths = fid_over_sampler_steps(ours, PAPER, stem)
    assert_written(paths, stem)
    with Image.open(paths[0]) as both:
        width_both = both.width
    # String step keys (as YAML may give them) are accepted.
    string_keys = {model: {str(s): f for s, f in curve.items()} for model, curve in PAPER.items()}
    assert (
        fid_over_sampler_steps(ours, string_keys, tmp_path / "str")[0].read_bytes() == paths[0].read_bytes()
    )
    # Without paper curves only our panel is drawn: a narrower figure.
    paths = fid_over_sampler_steps(ours, {}, tmp_path / "ours_only")
    assert_written(paths, tmp_path / "ours_only")
    with Image.open(paths[0]) as ours_only:
        assert ours_only.width < width_both


def test_fid_over_sampler_steps_empty(tmp_path):
    with pytest.raises(ValueError, match="fid_over_sampler_steps: no points"):
        fid_over_sampler_steps({}, PAPER, tmp_path / "fid_steps")


def test_ablation_comparison(tmp_path):
    groups = {
        "skip": {
            "concat_linear": over_training("a", [300.0, 100.0, 70.0]),
            "add": over_training("b", [310.0, 130.0, 90.0]),
            "none": over_training("c", [330.0, 200.0, 150.0]),
        },
        "time_cond": {
            "token": over_training("d", [300.0, 100.0]),
            "adaln": over_training("e", [290.0, 95.0]),
        },
        "conv": {"after": over_training("f", [300.0, 100.0])},
        "patch_embed": {"linear": over_training("g", [300.0, 100.0])},
    }
    stem = tmp_path / "ablation"
    paths = ablation_comparison(groups, stem, paper_best={"skip": "concat_linear", "conv": "after"})
    assert_written(paths, stem, min_width=1000)  # three panels side by side
    with Image.open(paths[0]) as image:
        # Four axes: two rows of at most three panels.
        assert image.size == (round(3 * PANEL_SIZE[0] * DPI), round(2 * PANEL_SIZE[1] * DPI))
    plain = ablation_comparison(groups, tmp_path / "plain")
    assert plain[0].read_bytes() != paths[0].read_bytes()  # the paper's choice changes the drawing


def test_ablation_comparison_draws_the_mean_over_seeds_and_their_range(tmp_path):
    from uvit.figures import seed_spread

    assert seed_spread([500, 250, 500, 250], [10.0, 30.0, 14.0, 20.0]) == ([250, 500], [25.0, 12.0], [20.0, 10.0],
                                                                           [30.0, 14.0])  # fmt: skip
    one = {"skip": {"add": over_training("a", [300.0, 100.0]), "none": over_training("b", [330.0, 200.0])}}
    seeds = {"skip": {"add": over_training("a0", [300.0, 100.0]) + over_training("a1", [280.0, 120.0]),
                      "none": over_training("b", [330.0, 200.0])}}  # fmt: skip
    single, spread = (
        ablation_comparison(one, tmp_path / "one"),
        ablation_comparison(seeds, tmp_path / "seeds"),
    )
    assert_written(spread, tmp_path / "seeds")
    assert single[0].read_bytes() != spread[0].read_bytes()  # the second seed shades a band around the mean


def test_ablation_comparison_empty(tmp_path):
    with pytest.raises(ValueError, match="ablation_comparison: no ablation axes"):
        ablation_comparison({}, tmp_path / "ablation")
    # An axis none of whose values ran (the quick tier): a panel that says so, not an error.
    png, pdf = ablation_comparison({"skip": {"add": [], "none": []}}, tmp_path / "not_run")
    assert png.is_file() and pdf.read_bytes().startswith(b"%PDF")


# --------------------------------------------------------------------------------------------------------
# loss_curves
# --------------------------------------------------------------------------------------------------------


def test_curve_data_is_each_experiments_points_sorted_and_drops_stale_files(tmp_path):
    points = {
        "b": [fid_point("b", 30.5, 400), fid_point("b", 41.25, 100)],
        "a": [fid_point("a", 9.0, 200) | {"fid_floor": None}],
    }
    (tmp_path / "gone.csv").write_text("training_steps,fid,fid_floor\n1,2,3\n")
    written = write_curve_data(points, "training_steps", tmp_path)
    assert [p.name for p in written] == ["a.csv", "b.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    assert (
        tmp_path / "b.csv"
    ).read_text() == "training_steps,fid,fid_floor\n100,41.25,21.61\n400,30.5,21.61\n"
    assert (tmp_path / "a.csv").read_text() == "training_steps,fid,fid_floor\n200,9.0,\n"


def test_loss_curves(tmp_path):
    csvs = {"pixel": write_loss_csv(tmp_path / "a.csv"), "latent": write_loss_csv(tmp_path / "b.csv")}
    stem = tmp_path / "loss"
    assert_written(loss_curves(csvs, stem), stem)


def test_loss_curves_missing_column(tmp_path):
    bad = write_loss_csv(tmp_path / "bad_loss.csv", header="step,lossy,lr")
    with pytest.raises(ValueError, match=r"bad_loss\.csv.*loss"):
        loss_curves({"pixel": write_loss_csv(tmp_path / "ok.csv"), "bad": bad}, tmp_path / "loss")
    assert not (tmp_path / "loss.png").exists()


def test_loss_curves_empty(tmp_path):
    with pytest.raises(ValueError, match="loss_curves: no loss CSV"):
        loss_curves({}, tmp_path / "loss")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("step,loss,lr\n")
    with pytest.raises(ValueError, match=r"header_only\.csv: no loss rows"):
        loss_curves({"pixel": header_only}, tmp_path / "loss")


def test_captioned_samples_show_each_caption(tmp_path):
    from uvit.figures import captioned_samples

    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(tmp_path / f"{i:06d}.png")
    png, pdf = captioned_samples(
        tmp_path, [f"caption {i}" for i in range(8)], tmp_path / "grid", rows=4, cols=6
    )
    assert Image.open(png).size[1] < Image.open(png).size[0]  # two rows of six, not four
    assert pdf.read_bytes().startswith(b"%PDF")
    with pytest.raises(FileNotFoundError, match="no PNG samples"):
        captioned_samples(tmp_path / "none", ["x"], tmp_path / "g2")


def test_sample_grid_order_puts_one_class_per_row(tmp_path):
    """A 2-class grid from samples drawn for classes 0, 1, 0, 1 (index mod 2): row 0 holds samples 0 and 2, row 1
    samples 1 and 3 (COLOURS[k] is sample k's colour)."""
    write_solid_pngs(tmp_path / "samples", COLOURS, size=4)
    order = [0, 2, 1, 3]  # written out here, not derived from the code under test
    grid = np.asarray(
        Image.open(sample_grid(tmp_path / "samples", tmp_path / "g", 2, 2, order)[0]).convert("RGB")
    )
    scale = math.ceil(256 / 14)
    for cell, sample in enumerate(order):
        r, c = divmod(cell, 2)
        top, left = (2 + r * 6) * scale, (2 + c * 6) * scale
        assert (grid[top : top + 4 * scale, left : left + 4 * scale] == COLOURS[sample]).all(), f"cell {cell}"
