"""Figures for paper_tables/figures/: each call writes `<stem>.png` and `<stem>.pdf` and returns both paths.

- `sample_grid`: the first rows x cols samples of a folder with 2-px white borders, upscaled (nearest
  neighbour) to at least 256 px wide. Stands in for the paper's sample figures (Figure 1 and appendix).
- `fid_over_training`: FID against training steps, one line per experiment, with each experiment's floor
  (FID of real held-out images against the reference set) dashed. Stands in for the ablation plots of
  FID vs training iterations (section 3.1).
- `fid_over_sampler_steps`: FID against sampler steps; the paper's ImageNet 256 curves (approximate values
  read off the paper, U-ViT vs LDM with DPM-Solver) on the left, ours on the right. Stands in for the
  paper's comparison of sampler steps on ImageNet 256.
- `write_curve_data`: the numbers behind the two FID figures, a CSV per experiment (DVC plots overlay them).
- `loss_curves`: training loss against step from each experiment's `loss.csv` (header `step,loss,lr`).
  No paper counterpart; a sanity check for the demo runs.
- `ablation_comparison`: one panel per ablation axis (skip, time condition, conv, patch embedding, position
  embedding), FID against training steps per value (the mean over its seeds, their range shaded), the
  paper's choice drawn thicker. Stands in for the ablation figures of section 3.1.

A "FID point" is the dict of a metrics/<experiment>/fid.json file: at least `fid`, `fid_floor`,
`training_steps` and `sampler_steps`. Figures use `matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no global state) and carry no timestamps, so the same data always gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter
from PIL import Image

from uvit.fileio import atomic_write_bytes

BORDER = 2  # px of white between and around grid cells
MIN_GRID_WIDTH = 256  # px
PANEL_SIZE = (4.8, 3.6)  # inches per subplot
DPI = 150
FLOOR_LABEL = "floor (real held-out images)"

# --------------------------------------------------------------------------------------------------------
# Output: PNG + PDF, deterministic, atomic
# --------------------------------------------------------------------------------------------------------


def output_paths(out_stem: Path) -> list[Path]:
    out_stem = Path(out_stem)
    if out_stem.suffix.lower() in (".png", ".pdf"):
        raise ValueError(f"{out_stem}: give the output stem without a suffix; .png and .pdf are added")
    return [out_stem.with_name(out_stem.name + suffix) for suffix in (".png", ".pdf")]


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    # No software version in the PNG, no creation date in the PDF: identical data -> identical bytes.
    metadata = {"Software": None} if fmt == "png" else {"CreationDate": None}
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def save_figure(fig: Figure, out_stem: Path) -> list[Path]:
    png, pdf = output_paths(out_stem)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png, figure_bytes(fig, "png"))
    atomic_write_bytes(pdf, figure_bytes(fig, "pdf"))
    return [png, pdf]


def new_figure(panels: int, max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` subplots in rows of at most `max_cols`; unused grid cells are hidden."""
    cols = min(panels, max_cols)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


# --------------------------------------------------------------------------------------------------------
# FID points
# --------------------------------------------------------------------------------------------------------


def fid_series(points: list[dict], x_key: str, where: str) -> tuple[list[float], list[float], float | None]:
    """(x, fid) sorted by x, and the floor of the point with the largest x."""
    for point in points:
        missing = sorted({x_key, "fid"} - point.keys())
        if missing:
            raise ValueError(f"{where}: FID point without {', '.join(missing)}: {point}")
    points = sorted(points, key=lambda p: p[x_key])
    return [p[x_key] for p in points], [p["fid"] for p in points], points[-1].get("fid_floor")


def non_empty(series: dict[str, list], what: str, noun: str = "experiment") -> dict[str, list]:
    """The series that have points; ValueError when none has."""
    kept = {label: points for label, points in series.items() if points}
    if not kept:
        raise ValueError(f"{what}: no points for any {noun}")
    return kept


def plot_fid_lines(ax: Axes, series: dict[str, list[dict]], x_key: str, where: str) -> None:
    """One line per series, each with its floor dashed in the same colour."""
    for k, (label, points) in enumerate(series.items()):
        xs, fids, floor = fid_series(points, x_key, f"{where} ({label})")
        (line,) = ax.plot(xs, fids, marker="o", color=f"C{k}", label=label)
        if floor is not None:
            ax.axhline(floor, color=line.get_color(), linestyle="--", linewidth=1)


def floor_legend(ax: Axes, floor_color: str = "0.35") -> None:
    """Legend with one entry explaining the dashed floor lines."""
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=floor_color, linestyle="--", linewidth=1, label=FLOOR_LABEL))
    ax.legend(handles=handles, fontsize="small")


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (300, 0.06); LogFormatter still picks which ticks get one."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_y(ax: Axes) -> None:
    """Log y axis with plain tick labels; minor ticks labelled too when the range spans few decades."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def style_fid_axes(ax: Axes, xlabel: str, title: str, xticks: Iterable[float] | None = None) -> None:
    log_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (log scale)")
    ax.set_title(title)
    if xticks is not None:
        ax.set_xticks(sorted(set(xticks)))
    ax.grid(True, which="both", alpha=0.3)


# --------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------


def grid_pixels(images: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Cells of H x W laid out row-major with BORDER px of white, then upscaled to >= MIN_GRID_WIDTH px."""
    height, width, _ = images[0].shape
    grid = np.full((rows * (height + BORDER) + BORDER, cols * (width + BORDER) + BORDER, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        top, left = BORDER + r * (height + BORDER), BORDER + c * (width + BORDER)
        grid[top : top + height, left : left + width] = image
    scale = math.ceil(MIN_GRID_WIDTH / grid.shape[1])
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour upscaling


def sample_grid(
    sample_dir: Path, out_stem: Path, rows: int = 8, cols: int = 8, order: list[int] | None = None
) -> list[Path]:
    """A rows x cols grid of the first samples (sorted file names), or of the samples at the indices `order`
    lists row by row; missing cells stay white."""
    if rows < 1 or cols < 1:
        raise ValueError(f"sample_grid: rows and cols must be positive, got {rows} x {cols}")
    files = sorted(Path(sample_dir).glob("*.png"))
    files = [files[i] for i in order if i < len(files)] if order else files[: rows * cols]
    if not files:
        raise FileNotFoundError(f"{sample_dir}: no PNG samples for the grid")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    for f, image in zip(files, images, strict=True):
        if image.shape != images[0].shape:
            raise ValueError(f"{f}: {image.shape[1]}x{image.shape[0]} differs from {files[0]}'s size")
    pixels = grid_pixels(images, rows, cols)

    png, pdf = output_paths(out_stem)
    png.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # exact pixels; PIL adds no timestamp
    atomic_write_bytes(png, buffer.getvalue())

    # PDF: the same pixels as one image filling the page, one pixel per 1/DPI inch, no resampling.
    fig = Figure(figsize=(pixels.shape[1] / DPI, pixels.shape[0] / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels, interpolation="none")
    ax.set_axis_off()
    atomic_write_bytes(pdf, figure_bytes(fig, "pdf"))
    return [png, pdf]


def captioned_samples(
    sample_dir: Path, captions: list[str], out_stem: Path, rows: int = 4, cols: int = 6
) -> list[Path]:
    """Text-to-image samples with the caption each was drawn for (sample i: captions[i]) under it."""
    files = sorted(Path(sample_dir).glob("*.png"))[: rows * cols]
    if not files:
        raise FileNotFoundError(f"{sample_dir}: no PNG samples for the grid")
    rows = math.ceil(len(files) / cols)
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows), layout="constrained")
    for ax, file, caption in zip(
        fig.subplots(rows, cols, squeeze=False).ravel(), files, captions, strict=False
    ):
        ax.imshow(np.asarray(Image.open(file).convert("RGB")), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(caption, 22)[:3]), fontsize=6)
        ax.set_axis_off()
    for ax in fig.axes[len(files) :]:
        ax.set_axis_off()
    return save_figure(fig, out_stem)


def fid_over_training(
    points: dict[str, list[dict]], out_stem: Path, title: str = "FID over training (demo scale)"
) -> list[Path]:
    """FID against training steps, one line per experiment (the dict key is its legend label)."""
    series = non_empty(points, "fid_over_training")
    fig, (ax,) = new_figure(1)
    plot_fid_lines(ax, series, "training_steps", "fid_over_training")
    style_fid_axes(ax, "training steps", title)
    floor_legend(ax)
    return save_figure(fig, out_stem)


def fid_over_sampler_steps(
    ours: dict[str, list[dict]], paper: dict[str, dict[int, float]], out_stem: Path
) -> list[Path]:
    """FID against sampler steps: the paper's ImageNet 256 curves (left, when given) and ours (right)."""
    series = non_empty(ours, "fid_over_sampler_steps")
    paper = {model: curve for model, curve in paper.items() if curve}
    fig, axes = new_figure(2 if paper else 1)
    if paper:
        ax = axes[0]
        steps = []
        for model, curve in paper.items():
            curve = {int(s): fid for s, fid in curve.items()}  # YAML may give the steps as strings
            xs = sorted(curve)
            ax.plot(xs, [curve[s] for s in xs], marker="o", label=model)
            steps += xs
        style_fid_axes(ax, "sampler steps", "paper (ImageNet 256, approx.)", steps)
        ax.legend(fontsize="small")
    ax = axes[-1]
    plot_fid_lines(ax, series, "sampler_steps", "fid_over_sampler_steps")
    steps = [p["sampler_steps"] for points in series.values() for p in points]
    style_fid_axes(ax, "sampler steps", "ours (demo scale)", steps)
    floor_legend(ax)
    return save_figure(fig, out_stem)


def write_curve_data(points: dict[str, list[dict]], x_key: str, out_dir: Path) -> list[Path]:
    """The data behind an FID figure: `<out_dir>/<experiment>.csv` (`x_key,fid,fid_floor`, sorted by x) per
    experiment; a CSV of an experiment no longer given is removed (no stale curve looks current)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, series in sorted(points.items()):
        rows = [f"{x_key},fid,fid_floor"]
        for p in sorted(series, key=lambda p: p[x_key]):
            rows.append(f"{p[x_key]},{p['fid']},{'' if p.get('fid_floor') is None else p['fid_floor']}")
        path = out_dir / f"{name}.csv"
        atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())
        written.append(path)
    for stale in set(out_dir.glob("*.csv")) - set(written):
        stale.unlink()
    return written


def read_loss_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(step, loss) columns of a `step,loss,lr` CSV; ValueError naming the file when malformed or empty."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = sorted({"step", "loss"} - set(reader.fieldnames or []))
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} column (header: {reader.fieldnames})")
        try:
            rows = [(float(row["step"]), float(row["loss"])) for row in reader]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: line {reader.line_num}: {error}") from None
    if not rows:
        raise ValueError(f"{path}: no loss rows")
    steps, losses = np.array(rows).T
    return steps, losses


def loss_curves(csv_paths: dict[str, Path], out_stem: Path) -> list[Path]:
    """Training loss against step, one line per experiment (the dict key is its legend label)."""
    if not csv_paths:
        raise ValueError("loss_curves: no loss CSV files given")
    fig, (ax,) = new_figure(1)
    for label, path in csv_paths.items():
        steps, losses = read_loss_csv(Path(path))
        ax.plot(steps, losses, linewidth=1.2, label=label)
    log_y(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title("Training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, out_stem)


def seed_spread(xs: list, fids: list[float]) -> tuple[list, list[float], list[float], list[float]]:
    """(x, mean, min, max) of the FIDs at each distinct x (one per seed), sorted by x."""
    by_x: dict = {}
    for x, fid in zip(xs, fids, strict=True):
        by_x.setdefault(x, []).append(fid)
    steps = sorted(by_x)
    return (
        steps,
        [float(np.mean(by_x[x])) for x in steps],
        [min(by_x[x]) for x in steps],
        [max(by_x[x]) for x in steps],
    )


def ablation_comparison(
    groups: dict[str, dict[str, list[dict]]], out_stem: Path, paper_best: dict[str, str] | None = None
) -> list[Path]:
    """One panel per ablation axis, FID over training steps per value; the paper's choice drawn thicker. A value's
    points may come from several seeds: its line is their mean at each step, their range shaded.

    A `paper_best` value that was not run is ignored (nothing to highlight); an axis none of whose values ran
    (the quick demo tier leaves the ablation out) gets a panel saying so, as the ablation table says 'not run'."""
    if not groups:
        raise ValueError("ablation_comparison: no ablation axes given")
    paper_best = paper_best or {}
    fig, axes = new_figure(len(groups))
    for ax, (axis, values) in zip(axes, groups.items(), strict=True):
        if not any(values.values()):
            ax.text(0.5, 0.5, f"{axis}: not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(axis)
            ax.set_axis_off()
            continue
        series = non_empty(values, f"ablation_comparison ({axis})", "value")
        floors = set()
        for k, (value, points) in enumerate(series.items()):
            xs, fids, floor = fid_series(points, "training_steps", f"ablation_comparison ({axis}={value})")
            xs, means, lows, highs = seed_spread(xs, fids)
            chosen = paper_best.get(axis) == value
            label = f"{value} (paper's choice)" if chosen else value
            ax.plot(xs, means, marker="o", color=f"C{k}", linewidth=3 if chosen else 1.3, label=label)
            if lows != highs:
                ax.fill_between(xs, lows, highs, color=f"C{k}", alpha=0.2, linewidth=0)
            if floor is not None:
                floors.add(floor)
        for floor in sorted(floors):
            ax.axhline(floor, color="0.5", linestyle="--", linewidth=1)
        style_fid_axes(ax, "training steps", axis)
        if floors:
            floor_legend(ax, "0.5")
        else:
            ax.legend(fontsize="small")
    return save_figure(fig, out_stem)
