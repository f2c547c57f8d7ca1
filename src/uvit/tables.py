"""The paper's tables as data: typed rows whose cells are named by column, and the builder of each table.

Each table is built as data (`Table`: named columns and rows, each row naming the metrics file its numbers come
from), then rendered to Markdown and LaTeX in paper_tables/ by `uvit.render`. `uvit verify` rebuilds the same
data from the metrics files and compares it with the committed files cell by cell. A row is built by column
name (`Table.add`): a column it does not name is empty, a name the table lacks is an error naming both.

- results: each paper row (src/uvit/paper_results.yaml) followed by the experiments that reproduce it or
  stand in for it at demo scale (paper section 4, Tables 1-4; the authors' README table).
- other_metrics: sFID, Inception Score, precision, recall and KID beside FID, the paper's where it gives them.
- training_steps: FID of each kept checkpoint (the paper shows these only as ablation curves, section 3.1).
- sampler_steps: FID over sampler steps, beside the paper's U-ViT-H/2 and LDM at the same step counts.
- ablations: per value of each ablation grid its seeds' mean FID and interval, and a verdict on the paper's
  ordering (section 3.1).
- guidance: FID and classifier accuracy at each guidance scale of a class experiment (a row's accuracy cells come
  from its accuracy record, `Row.cell_sources`, the rest from its FID record).
- autoencoders: each trained autoencoder's held-out PSNR and reconstruction FID beside the FID floor at the same
  count (the paper's autoencoder is Stable Diffusion's, trained elsewhere; the demo trains its own).

Demo rows say so and carry what differs from the paper's protocol (sample count, sampler, training steps,
resolution, reference statistics) and their provenance: short hashes of checkpoint and samples, commit.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from uvit import layout
from uvit.config import (
    autoencoder_downsampling,
    autoencoder_metrics_paths,
    current_settings,
    fid_metrics_paths,
    guidance_metrics_path,
    guidance_points,
    metrics_paths,
    read_yaml,
    resolve_experiment,
    settings_differences,
    variant_runs,
)
from uvit.fileio import read_json

DEMO_NOTE = (
    "**Demo-scale rows are not reproductions of the paper's numbers**: they run the same pipeline on small data "
    "on a CPU (tiny models, minutes of training, far fewer samples than the paper's 50,000, and reference "
    "statistics of a subset of the training set: see the Samples and Reference columns). Their FID is biased "
    "upward by the small sample count; the *floor* column is the FID of as many held-out real images against "
    "the same reference, scored the same way: what real data scores at that count, the yardstick for ours "
    "(not a bound: samples copying the reference would score below it)."
)


# --------------------------------------------------------------------------------------------------------
# The table model
# --------------------------------------------------------------------------------------------------------


class TableError(ValueError):
    """A row that does not fit its table: a column the table lacks, a cell that is not text, or a cell it needs
    left empty (a bug in a table's builder, not bad input)."""


@dataclass
class Row:
    """One row: its cells by column name (a column it does not name is empty) and where its numbers come from.
    Built by `Table.add`, which checks the names against the table's columns."""

    columns: tuple[str, ...] = field(repr=False)  # the table's, in order
    values: dict[str, str]  # cell text by column name
    source: str | None = None  # the metrics file behind this row's numbers (None: paper data or "not run")
    sources: tuple[str, ...] = ()  # the metrics files a row summarises (an ablation value's mean over seeds)
    cell_sources: dict[str, str] = field(default_factory=dict)  # columns whose numbers come from another file

    @property
    def cells(self) -> list[str]:
        """Every cell in column order, "" where the row names none (what the templates render and `uvit verify`
        parses back)."""
        return [self.values.get(column, "") for column in self.columns]

    def __getitem__(self, column: str) -> str:
        if column not in self.columns:
            raise KeyError(f"no column {column!r} (columns: {', '.join(self.columns)})")
        return self.values.get(column, "")

    @property
    def origin(self) -> str:
        """Where this row's numbers come from, for messages."""
        return self.source or ", ".join(self.sources) or "src/uvit/paper_results.yaml"

    def origin_of(self, column: str) -> str:
        """Where one cell's number comes from, for messages."""
        return self.cell_sources.get(column) or self.origin

    @property
    def every_source(self) -> set[str]:
        """Every metrics file a number of this row comes from."""
        return {self.source, *self.sources, *self.cell_sources.values()} - {None}


@dataclass
class Table:
    """A table's columns and rows. Every row fills the first column (the row's name in messages); a row traced to
    a metrics file fills `main_column`, the cell `uvit verify` points at when that file does not check out."""

    name: str  # file stem in paper_tables/
    title: str
    notes: list[str]
    columns: list[str]
    numeric: list[str]  # right-aligned columns
    rows: list[Row] = field(default_factory=list)
    main_column: str = "Our FID"  # where a row's headline number sits (what `uvit verify` points at)

    def __post_init__(self):
        repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if repeated:
            raise TableError(f"table {self.name}: column {repeated[0]!r} given twice")
        self.check_names("numeric column", self.numeric)
        self.check_names("main column", [self.main_column])

    def check_names(self, what: str, names) -> None:
        unknown = [name for name in names if name not in self.columns]
        if unknown:
            raise TableError(
                f"table {self.name}: {what} {unknown[0]!r} is not one of its columns ({', '.join(self.columns)})"
            )

    def add(
        self,
        cells: dict[str, str],
        *,
        source: str | None = None,
        sources: tuple[str, ...] = (),
        cell_sources: dict[str, str] | None = None,
    ) -> Row:
        """Append a row given its cells by column name (the rest empty) and where its numbers come from."""
        self.check_names("cell", cells)
        self.check_names("cell source", cell_sources or {})
        for column, text in cells.items():
            if not isinstance(text, str):
                raise TableError(f"table {self.name}: cell {column!r} is {text!r}, not text")
        first = self.columns[0]
        if not cells.get(first):
            raise TableError(
                f"table {self.name}: a row needs its {first!r} cell (the row's name), got {cells}"
            )
        if source and not cells.get(self.main_column):
            raise TableError(
                f"table {self.name}: the row from {source} needs its {self.main_column!r} cell "
                "(where `uvit verify` points at that file)"
            )
        row = Row(tuple(self.columns), dict(cells), source, tuple(sources), dict(cell_sources or {}))
        self.rows.append(row)
        return row

    @property
    def alignment(self) -> str:
        return "".join("r" if column in self.numeric else "l" for column in self.columns)

    def label(self, row: Row) -> str:
        """How a row is named in messages: its first non-empty cells."""
        return " / ".join(c for c in row.cells[:6] if c and c != "↳")[:80]


# --------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------


@functools.cache
def paper_data() -> dict:
    """The paper's numbers (read once per process: every table, and the Snakefile's table names, read them)."""
    return read_yaml(resources.files("uvit").joinpath("paper_results.yaml"))


def paper_choices() -> dict[str, str]:
    """The paper's choice on each ablation axis (section 3.1), drawn thicker in the ablation figures."""
    return {axis: str(a["paper_choice"]) for axis, a in paper_data()["ablations"].items()}


def ablation_curves(
    params: dict, grid: str, points: dict[str, list[dict]]
) -> dict[str, dict[str, list[dict]]]:
    """{axis: {value: FID points over training of every seed of that value}} of an ablation grid, from the points
    of each experiment (curves_by_experiment)."""
    return {
        axis: {
            str(value): [
                p for name in variant_runs(params, grid, axis, value).values() for p in points.get(name, [])
            ]
            for value in values
        }
        for axis, values in params["ablations"][grid]["axes"].items()
    }


def short(md5: str | None) -> str:
    return f"`{md5[:8]}`" if md5 else "-"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def commit_cell(metrics: dict) -> str:
    """The commit a record was computed at (+dirty when the tree had uncommitted changes)."""
    prov = metrics["provenance"]
    return f"`{(prov['commit'] or '-')[:8]}{'+dirty' if prov['dirty'] else ''}`"


def provenance_cells(metrics: dict) -> dict[str, str]:
    """Checkpoint hash, samples hash, commit."""
    inputs = metrics["provenance"]["inputs"]
    return {
        "Checkpoint": short(inputs["checkpoint"]["md5"]),
        "Samples hash": short(inputs["samples"]["md5"]),
        "Commit": commit_cell(metrics),
    }


def protocol_cells(metrics: dict) -> dict[str, str]:
    """What a record's protocol was: sample count, reference, sampler, guidance, training steps."""
    return {
        "Samples": str(metrics["num_samples"]),
        "Reference": metrics["reference"],
        "Sampler, steps": sampler_cell(metrics),
        "Guidance": str(metrics["guidance_scale"]),
        "Training steps": str(metrics["training_steps"]),
    }


def sampler_cell(metrics: dict) -> str:
    return f"{metrics['sampler']} {metrics['sampler_steps']}"


def scale_cell(metrics: dict) -> str:
    return f"**{metrics['scale']}** ({metrics['resolution']}x{metrics['resolution']})"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def read_metrics(paths: list[Path | str], root: Path = Path(".")) -> dict[str, dict]:
    """Metrics files by path (as given, relative to the project root)."""
    return {str(p): read_json(root / p, "run the stage that writes it again") for p in paths}


# --------------------------------------------------------------------------------------------------------
# Table builders
# --------------------------------------------------------------------------------------------------------

RESULTS_COLUMNS = [
    "Paper row", "Model", "Paper FID", "Protocol (paper)", "Ours: experiment", "Scale", "Our FID", "FID floor",
    "Difference", "Classifier accuracy", "Samples", "Reference", "Sampler, steps", "Guidance", "Training steps",
    "Checkpoint", "Samples hash", "Commit",
]  # fmt: skip
ACCURACY_NOTE = (
    '"Classifier accuracy": class-conditional rows only, the share of samples that a small CNN trained on the '
    "real training split labels as the class they were drawn for (its own held-out accuracy: `guidance.md`)."
)


def row_experiments(params: dict, paper_row: str) -> list[str]:
    """Our experiments standing for a paper row (ablation runs have their own table)."""
    bases = {grid["base"] for grid in (params.get("ablations") or {}).values()}
    return [
        name
        for name, exp in params["experiments"].items()
        if exp["paper_row"] == paper_row and "ablation" not in exp and name not in bases
    ]


def not_run_cells(name: str, scale: str, command: str) -> dict[str, str]:
    """An experiment not run yet: 'not run', and in the row's last cell (a row not run has no commit) the
    command that runs it."""
    return {"Paper row": "↳", "Ours: experiment": f"`{name}`", "Scale": scale, "Our FID": "not run",
            "Commit": command}  # fmt: skip


def results_table(params: dict, metrics: dict[str, dict]) -> Table:
    """Each paper row, then our experiments standing for it (measured, or 'not run' with the command)."""
    table = Table(
        "results",
        "U-ViT: the paper's FID beside ours",
        [
            "FID: lower is better. " + DEMO_NOTE,
            '"Difference" is ours minus the paper\'s and is only meaningful for paper-scale rows.',
            ACCURACY_NOTE,
        ],
        RESULTS_COLUMNS,
        ["Paper FID", "Our FID", "FID floor", "Difference", "Classifier accuracy", "Samples", "Guidance",
         "Training steps"],
    )  # fmt: skip
    finals = {m["experiment"]: (path, m) for path, m in metrics.items() if is_final(path, m)}
    for key, paper in paper_data()["rows"].items():
        guidance = f", guidance {paper['guidance_scale']}" if paper["guidance_scale"] is not None else ""
        protocol = (
            f"{paper['samples']} samples, {paper['sampler']} {paper['sampler_steps']}{guidance}, "
            f"{paper['training_steps']} steps"
        )
        approx = " (approx.)" if paper["approximate"] else ""
        table.add(
            {
                "Paper row": paper["setting"],
                "Model": paper["model"],
                "Paper FID": f"{paper['fid']:.2f}{approx}",
                "Protocol (paper)": protocol,
            }
        )
        for name in row_experiments(params, key):
            measured = [(finals[name], f"`{name}`")] if name in finals else []
            pretrained = layout.released_fid_metrics(name)
            if pretrained in metrics:
                measured.append(((pretrained, metrics[pretrained]), f"`{name}` (authors' weights)"))
            for (path, m), label in measured:
                diff = f"{m['fid'] - paper['fid']:+.2f}" if m["scale"] == "paper" else "n/a (demo)"
                accuracy = layout.accuracy_metrics(name) if path == layout.fid_metrics(name) else None
                has_accuracy = accuracy in metrics
                table.add(
                    {
                        "Paper row": "↳",
                        "Model": m["model"],
                        "Ours: experiment": label,
                        "Scale": scale_cell(m),
                        "Our FID": fmt(m["fid"]),
                        "FID floor": fmt(m["fid_floor"]),
                        "Difference": diff,
                        "Classifier accuracy": percent(metrics[accuracy]["classifier_accuracy"])
                        if has_accuracy
                        else "-",
                        **protocol_cells(m),
                        **provenance_cells(m),
                    },
                    source=path,
                    cell_sources={"Classifier accuracy": accuracy} if has_accuracy else {},
                )
            if not measured and name in params["targets"] and name not in params["quick_targets"]:
                table.add(not_run_cells(name, "demo", "`make demo-full`"))
            if not measured and resolve_experiment(params, name)["scale"] == "paper":
                command = (
                    f"`snakemake --cores all {layout.fid_metrics(name)}` (authors' weights: "
                    f"`{layout.released_fid_metrics(name)}`)"
                )
                table.add(not_run_cells(name, "paper", command))
    return table


OTHER_METRICS = {"sfid": "sFID", "inception_score": "Inception Score", "precision": "Precision", "recall": "Recall",
                 "kid": "KID"}  # fmt: skip
OTHER_COLUMNS = ["Paper row", "Model", "Ours: experiment", "Scale", "FID protocol", "Samples", "FID",
                 *OTHER_METRICS.values()]  # fmt: skip


def other_metrics_table(params: dict, metrics: dict[str, dict]) -> Table:
    """FID beside sFID, Inception Score, precision, recall and KID (ADM's suite), the paper's where it gives them."""
    table = Table(
        "other_metrics",
        "U-ViT: the other metrics of the ADM suite beside FID",
        [
            "sFID (spatial features) and KID: lower is better; Inception Score, precision and recall: higher is "
            "better. All come from the FID stage's one pass of Inception features, with ADM's definitions "
            "(precision and recall: k = 3 manifolds). " + DEMO_NOTE,
            "FID protocol: the resize and input range of the Inception features (docs/fid.md); '-' marks metrics "
            "files written before the protocol was recorded (clean-fid's clean resize, the only one then). "
            "'-' in a metric column: not computed for that run (the Inception Score needs Inception's logits, "
            "which the offline weights lack).",
        ],
        OTHER_COLUMNS,
        ["Samples", "FID", *OTHER_METRICS.values()],
        main_column="FID",
    )
    finals = {m["experiment"]: (path, m) for path, m in metrics.items() if is_final(path, m)}
    others = paper_data()["other_metrics"]
    for key, paper in paper_data()["rows"].items():
        ours = [finals[name] for name in row_experiments(params, key) if name in finals]
        if key not in others and not ours:
            continue
        reported = others.get(key, {})
        table.add(
            {
                "Paper row": paper["setting"],
                "Model": paper["model"],
                "Scale": "paper",
                "Samples": str(paper["samples"]),
                "FID": f"{paper['fid']:.2f}",
                **{column: str(reported.get(metric, "-")) for metric, column in OTHER_METRICS.items()},
            }
        )
        for path, m in ours:
            table.add(
                {
                    "Paper row": "↳",
                    "Model": m["model"],
                    "Ours: experiment": f"`{m['experiment']}`",
                    "Scale": scale_cell(m),
                    "FID protocol": m.get("fid_protocol", "-"),
                    "Samples": str(m["num_samples"]),
                    "FID": fmt(m["fid"]),
                    **{column: fmt(m.get(metric), ".4g") for metric, column in OTHER_METRICS.items()},
                },
                source=path,
            )
    return table


def is_final(path: str, m: dict) -> bool:
    """Whether a record is an experiment's final FID (not a curve, guidance, autoencoder or released-weights one)."""
    return "experiment" in m and path == layout.fid_metrics(m["experiment"])


def curve_experiments(params: dict, over: str) -> list[str]:
    """The targets with an FID curve over `over` (training_steps: checkpoints kept; sampler_steps: extra step
    counts evaluated)."""

    def varied(exp: dict) -> list:
        return (
            exp["training"]["keep_steps"] if over == "training_steps" else exp["evaluation"]["sampler_steps"]
        )

    return [name for name in params["targets"] if varied(resolve_experiment(params, name))]


def curve_data_paths(params: dict, over: str) -> list[str]:
    """The CSV of each curve over `over` (the data behind its figure; DVC's top-level plots overlay them)."""
    return [layout.curve_data(over, name) for name in curve_experiments(params, over)]


def curve_rows(params: dict, metrics: dict[str, dict], over: str) -> list[tuple[str, dict]]:
    """(path, metrics) of the points of each experiment's curve over `over` (training_steps or
    sampler_steps), the final point included, sorted by experiment then x."""
    points = []
    for name in curve_experiments(params, over):
        exp = resolve_experiment(params, name)
        for path in fid_metrics_paths(params, name):
            m = metrics.get(path)
            if m is None:
                continue
            on_curve = (
                m["sampler_steps"] == exp["sampling"]["steps"]
                if over == "training_steps"
                else m["training_steps"] == exp["training"]["steps"]
            )
            if on_curve and m["guidance_scale"] == exp["sampling"]["guidance_scale"]:  # not a guidance point
                points.append((path, m))
    return sorted(points, key=lambda p: (p[1]["experiment"], p[1][over]))


def curves_by_experiment(params: dict, metrics: dict[str, dict], over: str) -> dict[str, list[dict]]:
    """The points of curve_rows grouped by experiment (the figures' input)."""
    curves: dict[str, list[dict]] = {}
    for _, m in curve_rows(params, metrics, over):
        curves.setdefault(m["experiment"], []).append(m)
    return curves


CURVE_COLUMNS = [
    "Experiment", "Stands in for", "Scale", "Training steps", "Sampler, steps", "Our FID", "FID floor", "Samples",
    "Reference", "Guidance", "Checkpoint", "Samples hash", "Commit",
]  # fmt: skip


def curve_cells(m: dict) -> dict[str, str]:
    """The cells of CURVE_COLUMNS for one point of a curve."""
    return {
        "Experiment": f"`{m['experiment']}`",
        "Stands in for": m["paper_row"],
        "Scale": scale_cell(m),
        "Our FID": fmt(m["fid"]),
        "FID floor": fmt(m["fid_floor"]),
        **protocol_cells(m),
        **provenance_cells(m),
    }


def training_steps_table(params: dict, metrics: dict[str, dict]) -> Table:
    table = Table(
        "training_steps",
        "FID over training steps",
        [
            "The paper shows FID over training iterations only as curves (the ablations of section 3.1), so "
            "this table has no paper column: it lists the FID of each checkpoint an experiment keeps "
            "(`training.keep_steps`), sampled with the experiment's sampler. " + DEMO_NOTE
        ],
        CURVE_COLUMNS,
        ["Training steps", "Our FID", "FID floor", "Samples", "Guidance"],
    )
    for path, m in curve_rows(params, metrics, "training_steps"):
        table.add(curve_cells(m), source=path)
    return table


def sampler_steps_table(params: dict, metrics: dict[str, dict]) -> Table:
    """Our FID at each sampler step count, beside the paper's at the same count (where it reports one)."""
    paper = paper_data()["sampler_steps"]
    models = {m: f"Paper FID, {m}" for m in paper["models"]}  # model -> its column
    approx = " (approx.)" if paper["approximate"] else ""
    table = Table(
        "sampler_steps",
        "FID over sampler steps",
        [
            f"Paper: {paper['setting']}; {paper['source']}{approx}. Ours: the final EMA weights of each "
            "experiment that lists `evaluation.sampler_steps`, sampled with its sampler at each step count. "
            + DEMO_NOTE
        ],
        ["Sampler steps", *models.values(), *CURVE_COLUMNS],
        ["Sampler steps", *models.values(), "Training steps", "Our FID", "FID floor", "Samples", "Guidance"],
    )  # fmt: skip
    ours = curve_rows(params, metrics, "sampler_steps")
    steps = sorted(
        {s for m in models for s in paper["models"][m]["fid"]} | {m["sampler_steps"] for _, m in ours}
    )
    for n in steps:
        paper_cells = {column: fmt(paper["models"][m]["fid"].get(n)) for m, column in models.items()}
        matches = [(path, m) for path, m in ours if m["sampler_steps"] == n]
        if not matches:
            table.add({"Sampler steps": str(n), **paper_cells})
        for path, m in matches:
            table.add({"Sampler steps": str(n), **paper_cells, **curve_cells(m)}, source=path)
    return table


ABLATION_COLUMNS = [
    "Axis", "Value", "Paper's choice", "Seeds", "Mean FID", "95% interval", "Verdict (axis)", "Seed", "FID",
    "FID floor", "Training steps", "Samples", "Sampler, steps", "Checkpoint", "Samples hash", "Commit",
]  # fmt: skip
CONFIDENCE = 0.95  # of the two-sided Student-t interval of a variant's mean FID over its seeds


def mean_interval(fids: list[float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean FID over seeds: mean +- t(0.975, n-1) s / sqrt(n). None below two
    seeds: one run says nothing about how much FID moves with the seed."""
    if len(fids) < 2:
        return None
    from scipy.stats import t  # the t quantile; scipy comes with scikit-learn and clean-fid

    mean = statistics.fmean(fids)
    half = t.ppf(0.5 + CONFIDENCE / 2, len(fids) - 1) * statistics.stdev(fids) / math.sqrt(len(fids))
    return mean - half, mean + half


def claimed_pairs(paper: dict, values: list[str]) -> list[tuple[str, str]]:
    """(better, worse) pairs the paper's ordering claims among an axis's values: its choice better than every
    other value, and every value better than its worst where it names one."""
    best, worst = str(paper["paper_choice"]), str(paper.get("paper_worst"))
    pairs = [(best, v) for v in values if v != best] if best in values else []
    if worst in values:
        pairs += [(v, worst) for v in values if v not in (best, worst)]
    return pairs


def pair_outcome(better: tuple[float, float] | None, worse: tuple[float, float] | None) -> str:
    """One claimed pair: 'holds' when the interval the paper ranks better lies wholly below the other (lower FID),
    'reversed' when wholly above it, else 'inconclusive' (the intervals overlap, or a side has no interval)."""
    if better is None or worse is None:
        return "inconclusive"
    if better[1] < worse[0]:
        return "holds"
    return "reversed" if worse[1] < better[0] else "inconclusive"


def ordering_verdict(paper: dict, fids: dict[str, list[float]]) -> tuple[str, str]:
    """(verdict, why) for the paper's ordering on one axis, from the intervals over seeds of every value (`fids`:
    value -> its seeds' final FIDs, empty if not run). Reversed: some claimed pair is clearly the other way round;
    holds: every claimed pair clearly the paper's way; else inconclusive (never decided by one seed's ranking)."""
    intervals = {value: mean_interval(f) for value, f in fids.items()}
    pairs = claimed_pairs(paper, list(fids))
    if not pairs:
        return "inconclusive", f"the paper's choice ({paper['paper_choice']}) is not a value of this grid"
    if not any(fids.values()):
        return "inconclusive", "no seed run yet (`snakemake --cores all` runs them)"
    outcomes = {(b, w): pair_outcome(intervals[b], intervals[w]) for b, w in pairs}
    if "reversed" in outcomes.values():
        against = [
            f"{w}'s interval lies wholly below {b}'s" for (b, w), o in outcomes.items() if o == "reversed"
        ]
        return "reversed", "; ".join(against)
    if set(outcomes.values()) == {"holds"}:
        return "holds", "every interval the paper ranks better lies wholly below the one it ranks worse"
    return "inconclusive", undecided(outcomes, intervals)


def undecided(outcomes: dict[tuple[str, str], str], intervals: dict) -> str:
    """Why claimed pairs decide nothing: values without an interval, and pairs whose intervals overlap."""
    thin = [v for v in intervals if intervals[v] is None and any(v in pair for pair in outcomes)]
    overlap = [f"{b} and {w}" for (b, w), o in outcomes.items() if o == "inconclusive" and intervals[b] and
               intervals[w]]  # fmt: skip
    why = [f"no interval for {', '.join(thin)} (fewer than two seeds run)"] if thin else []
    return "; ".join(why + ([f"the intervals of {', '.join(overlap)} overlap"] if overlap else []))


def interval_cell(fids: list[float]) -> str:
    if not fids:
        return "-"
    interval = mean_interval(fids)
    return "1 seed, no interval" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def ablation_verdict(axis: str, paper: dict, fids: dict[str, list[float]]) -> tuple[str, str]:
    """(verdict, one sentence): the paper's finding, our mean FID and interval per value, and the verdict with
    its reason."""
    verdict, why = ordering_verdict(paper, fids)
    ran = sorted((v for v in fids if fids[v]), key=lambda v: statistics.fmean(fids[v]))
    spread = {v: f"in {interval_cell(fids[v])}" if len(fids[v]) > 1 else "(1 seed, no interval)" for v in ran}
    listed = ", ".join(f"{v} {statistics.fmean(fids[v]):.2f} {spread[v]}" for v in ran)
    not_run = [v for v in fids if not fids[v]]
    ours = (
        f" Ours, mean FID over seeds and its {CONFIDENCE:.0%} interval, best first: {listed}." if ran else ""
    ) + (f" Not run: {', '.join(not_run)}." if not_run else "")
    return verdict, f"**{axis}**: {verdict}. Paper: {paper['finding']}{ours} Why: {why}."


def seeds_cell(fids: list[float], seeds: int) -> str:
    if not fids:
        return "not run"
    return str(len(fids)) if len(fids) == seeds else f"{len(fids)} of {seeds}"


def add_variant_rows(
    table: Table, grid: str, axis: str, value: str, choice: bool, runs: dict, verdict: str
) -> None:
    """A variant's row (its seeds' mean FID and interval; the axis's verdict on the axis's first row), then a
    row per seed (`runs`: seed -> (metrics path, metrics) or None when not run)."""
    measured = {seed: run for seed, run in runs.items() if run is not None}
    fids = [m["fid"] for _, m in measured.values()]
    table.add(
        {
            "Axis": f"`{grid}`: {axis}",
            "Value": f"`{value}`",
            "Paper's choice": "yes" if choice else "",
            "Seeds": seeds_cell(fids, len(runs)),
            "Mean FID": fmt(statistics.fmean(fids)) if fids else "-",
            "95% interval": interval_cell(fids),
            "Verdict (axis)": verdict,
        },
        sources=tuple(path for path, _ in measured.values()),
    )
    for seed, run in runs.items():
        seed_cell = "-" if seed is None else str(seed)
        if run is None:
            table.add({"Axis": "↳", "Seed": seed_cell, "FID": "not run"})
            continue
        path, m = run
        table.add(
            {
                "Axis": "↳",
                "Seed": seed_cell,
                "FID": fmt(m["fid"]),
                "FID floor": fmt(m["fid_floor"]),
                "Training steps": str(m["training_steps"]),
                "Samples": str(m["num_samples"]),
                "Sampler, steps": sampler_cell(m),
                **provenance_cells(m),
            },
            source=path,
        )


def ablation_table(params: dict, metrics: dict[str, dict]) -> Table:
    """Each ablation grid of the targets: per value its seeds' mean final FID and interval, each seed below it,
    and per axis a verdict on the paper's ordering from those intervals. A seed without metrics is 'not run'."""
    table = Table(
        "ablations",
        "Ablations (paper section 3.1): the paper's findings beside ours",
        [
            "The paper reports its ablations as FID curves over training (CIFAR-10, a small U-ViT), so its side is "
            "the ordering it found, not numbers. Ours vary one model setting of a base experiment at a time "
            "(`ablations` in params.yaml), each value trained and evaluated alike once per seed of the grid "
            "(training and sampling seeds offset by it); `training_steps.md` and the ablation figures have their "
            "FID at every kept checkpoint. " + DEMO_NOTE,
            f"Each value's row gives the mean final FID over its seeds and the two-sided {CONFIDENCE:.0%} "
            "Student-t interval of that mean (mean +- t(0.975, n-1) s / sqrt(n), n seeds); with one seed there "
            "is no interval. The verdict per axis compares these intervals with the paper's ordering (its choice "
            "better than every other value, and every value better than its worst where it names one): "
            "**holds** when every such pair's intervals are disjoint the paper's way, **reversed** when any pair's "
            "are disjoint the other way, **inconclusive** otherwise (overlapping intervals, or fewer than two "
            "seeds: one seed's ranking decides nothing).",
        ],
        ABLATION_COLUMNS,
        ["Seeds", "Mean FID", "Seed", "FID", "FID floor", "Training steps", "Samples"],
        main_column="FID",  # a seed's (a value's row summarises several files)
    )
    grids = params.get("ablations") or {}
    for grid in params["target_grids"]:
        for axis, values in grids[grid]["axes"].items():
            note = add_axis_rows(table, params, metrics, grid, axis, values)
            table.notes.append(f"`{grid}`, {note}")
    for grid in grids:
        if grid not in params["target_grids"]:
            table.notes.append(
                f"`{grid}` ({grids[grid].get('description', '')}): not run; add `{grid}` to `targets` in "
                "params.yaml, then `snakemake --cores all` (or `--profile profiles/slurm`)."
            )
    return table


GUIDANCE_COLUMNS = [
    "Experiment", "Stands in for", "Scale", "Guidance scale", "Sampler, steps", "Our FID", "FID floor",
    "Classifier accuracy", "Classifier's own accuracy", "Classifier", "Samples", "Training steps", "Checkpoint",
    "Samples hash", "Commit",
]  # fmt: skip


def guidance_experiments(params: dict) -> list[str]:
    """The targets whose guidance effect is measured: those with further guidance scales or a classifier."""
    return [
        name
        for name in params["targets"]
        if guidance_points(exp := resolve_experiment(params, name)) or exp["evaluation"]["classifier"]
    ]


def guidance_table(params: dict, metrics: dict[str, dict]) -> Table:
    """Each guidance scale an experiment evaluates (its final one among them): FID with its floor, and the share
    of samples its classifier labels as the class they were drawn for, beside the classifier's own accuracy."""
    table = Table(
        "guidance",
        "Classifier-free guidance: FID and classifier accuracy per guidance scale",
        [
            "The paper's guidance trades diversity for fidelity to the condition (eps = eps_c + s (eps_c - eps_u); "
            "0: the conditional model alone). Ours: the final EMA weights of each experiment sampled at each scale of "
            "`evaluation.guidance_scales` and at `sampling.guidance_scale`, alike otherwise. \"Classifier "
            "accuracy\": the share of those samples that a small CNN trained on the real training split "
            "(`classifiers` in params.yaml) labels as the class they were drawn for (sample i: class i mod classes; "
            "chance: 1 / classes); \"Classifier's own accuracy\": that CNN on the held-out real images, the "
            "ceiling a perfect generator would reach by its labels. " + DEMO_NOTE
        ],
        GUIDANCE_COLUMNS,
        ["Guidance scale", "Our FID", "FID floor", "Classifier accuracy", "Classifier's own accuracy", "Samples",
         "Training steps"],
    )  # fmt: skip
    for name in guidance_experiments(params):
        exp = resolve_experiment(params, name)
        main = exp["sampling"]["guidance_scale"]
        for scale in sorted({float(main), *guidance_points(exp)}):
            final = scale == main
            path = layout.fid_metrics(name) if final else guidance_metrics_path(name, scale)
            if path not in metrics:
                continue
            m = metrics[path]
            accuracy = (
                layout.accuracy_metrics(name) if final else guidance_metrics_path(name, scale, "accuracy")
            )
            a = metrics.get(accuracy)
            classifier = {
                "Classifier accuracy": percent(a["classifier_accuracy"]) if a else "-",
                "Classifier's own accuracy": percent(a["classifier_test_accuracy"]) if a else "-",
                "Classifier": f"`{a['classifier']}` ({a['classifier_test_images']} {a['classifier_test_split']})"
                if a
                else "-",
            }
            table.add(
                {
                    "Experiment": f"`{name}`",
                    "Stands in for": m["paper_row"],
                    "Scale": scale_cell(m),
                    "Guidance scale": f"{m['guidance_scale']}" + (" (final)" if final else ""),
                    "Sampler, steps": sampler_cell(m),
                    "Our FID": fmt(m["fid"]),
                    "FID floor": fmt(m["fid_floor"]),
                    **classifier,
                    "Samples": str(m["num_samples"]),
                    "Training steps": str(m["training_steps"]),
                    **provenance_cells(m),
                },
                source=path,
                cell_sources=dict.fromkeys(classifier, accuracy) if a else {},
            )
    return table


AUTOENCODER_COLUMNS = [
    "Autoencoder", "Dataset", "Latent", "Training steps", "Held-out images", "PSNR (dB)", "rFID", "FID floor",
    "rFID / floor", "Reconstructions' FID", "Commit",
]  # fmt: skip


def autoencoder_table(params: dict, metrics: dict[str, dict]) -> Table:
    """Each trained autoencoder of the targets: held-out PSNR and rFID, with the floor at the same count."""
    table = Table(
        "autoencoders",
        "Autoencoders: held-out reconstructions",
        [
            "The paper's latent models use Stable Diffusion's KL-f8 autoencoder, trained elsewhere with perceptual "
            "and adversarial losses; the demo trains a small KL autoencoder in the pipeline (`autoencoders` in "
            "params.yaml; MSE and a small KL term). Scored on the first held-out images of the test split, from "
            "the posterior mean, in one Inception pass: PSNR on uint8 pixels; rFID, the reconstructions against "
            "the same originals (the usual reconstruction FID); \"FID floor\", those originals against the FID "
            "reference of the experiment that encodes with it (the yardstick at this count: rFID is biased upward "
            "by the small count as much as the floor is); \"Reconstructions' FID\", the reconstructions against "
            "that reference: what a latent model drawing exactly these latents would score."
        ],
        AUTOENCODER_COLUMNS,
        ["Training steps", "Held-out images", "PSNR (dB)", "rFID", "FID floor", "rFID / floor",
         "Reconstructions' FID"],
        main_column="rFID",
    )  # fmt: skip
    paths = {path for name in params["targets"] for path in autoencoder_metrics_paths(params, name)}
    for path in sorted(paths & set(metrics)):
        m = metrics[path]
        ae = params["autoencoders"][m["autoencoder"]]
        side = params["datasets"][ae["dataset"]]["resolution"] // autoencoder_downsampling(ae)
        floor = m.get("floor_fid")
        table.add(
            {
                "Autoencoder": f"`{m['autoencoder']}`",
                "Dataset": ae["dataset"],
                "Latent": f"{ae['latent_channels']}x{side}x{side}",
                "Training steps": str(ae["steps"]),
                "Held-out images": str(m["heldout_images"]),
                "PSNR (dB)": fmt(m["psnr_db"]),
                "rFID": fmt(m["rfid"]),
                "FID floor": fmt(floor),
                "rFID / floor": fmt(m["rfid"] / floor) if floor else "-",
                "Reconstructions' FID": fmt(m.get("reconstructions_fid")),
                "Commit": commit_cell(m),
            },
            source=path,
        )
    return table


def add_axis_rows(
    table: Table, params: dict, metrics: dict[str, dict], grid: str, axis: str, values: list
) -> str:
    """Add the rows of one axis of a grid (the verdict on its first value's row); returns its sentence for the
    notes."""
    finding = paper_data()["ablations"].get(axis)
    runs = {str(v): seed_runs(params, metrics, grid, axis, v) for v in values}
    fids = {v: [m["fid"] for _, m in filter(None, r.values())] for v, r in runs.items()}
    verdict, sentence = (
        ablation_verdict(axis, finding, fids) if finding else ("-", f"**{axis}**: no paper finding.")
    )
    choice = str(finding["paper_choice"]) if finding else None
    for k, (value, seeds) in enumerate(runs.items()):
        add_variant_rows(table, grid, axis, value, choice == value, seeds, "" if k else verdict)
    return sentence


def seed_runs(params: dict, metrics: dict[str, dict], grid: str, axis: str, value) -> dict:
    """seed -> (final FID metrics path, metrics) of one grid value, None for a seed not run."""
    paths = {seed: layout.fid_metrics(name) for seed, name in variant_runs(params, grid, axis, value).items()}
    return {seed: (path, metrics[path]) if path in metrics else None for seed, path in paths.items()}


def optional_metrics_files(params: dict) -> set[str]:
    """Metrics files the tables show where present and current, 'not run' where not: those of the ablation runs
    (a seed not run yet) and of the targets outside the quick tier (`make demo` leaves them as they are)."""
    return {path for name in params["targets"]
            if "ablation" in params["experiments"][name] or name not in params["quick_targets"]
            for path in metrics_paths(params, name)}  # fmt: skip


def present_metrics(params: dict, required: list[str], root: Path = Path(".")) -> dict[str, dict]:
    """The metrics the tables are built from: the required files, and every optional file that is present and
    computed with the settings params.yaml resolves to now (an older one would pass for a current number)."""
    metrics = read_metrics([str(path) for path in required], root)
    for path in sorted(optional_metrics_files(params) - set(metrics)):
        if (root / path).is_file():
            m = read_json(root / path, "run the stage that writes it again")
            if not settings_differences(m["provenance"]["settings"], current_settings(params, m)):
                metrics[path] = m
    return metrics


TABLE_BUILDERS = (
    results_table,
    other_metrics_table,
    training_steps_table,
    sampler_steps_table,
    ablation_table,
    guidance_table,
    autoencoder_table,
)


def build_tables(params: dict, metrics: dict[str, dict]) -> list[Table]:
    """Every table, from metrics keyed by their path relative to the project root (as the DAG names them)."""
    return [build(params, metrics) for build in TABLE_BUILDERS]


def table_names(params: dict) -> list[str]:
    """The tables `uvit tables` writes, each under the name it gives itself."""
    return [table.name for table in build_tables(params, {})]


def table_metrics_files(params: dict) -> list[str]:
    """The metrics files the tables are built from: every FID and classifier-accuracy record of the targets."""
    return list(dict.fromkeys(path for name in params["targets"] for path in metrics_paths(params, name)))


def figure_metrics_files(params: dict) -> list[str]:
    """The metrics files the figures are drawn from: every FID record of the targets."""
    return [path for name in params["targets"] for path in fid_metrics_paths(params, name)]
