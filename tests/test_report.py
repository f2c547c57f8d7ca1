"""Tables as data and their two renderings: what `uvit verify` parses back must be what was rendered."""

from __future__ import annotations

import pytest

from uvit.report import Row, Table, latex, paper_data, render
from uvit.verify import expected_rows, latex_rows, markdown_rows
from uvit.zoo import ARCHITECTURE_CHOICES


def test_latex_escapes_and_converts_inline_markdown():
    assert latex("`fmnist_pixel`") == r"\texttt{fmnist\_pixel}"
    assert latex("**demo** (32x32)") == r"\textbf{demo} (32x32)"
    assert latex("50% & #1 $") == r"50\% \& \#1 \$"
    assert latex("↳") == r"$\hookrightarrow$"


def test_rendered_cells_parse_back_in_both_formats():
    table = Table(
        "t",
        "A table",
        ["A note."],
        ["Name", "FID", "Command"],
        ["FID"],
        [
            Row(["`a_b`", "3.11 (approx.)", "`snakemake --cores all x & y`"], source="metrics/a/fid.json"),
            Row(["", "", ""]),
            Row(["**demo**", "-", "100%"]),
        ],
    )
    text = render(table)
    assert markdown_rows(text["md"]) == expected_rows(table, "md")
    assert latex_rows(text["tex"]) == expected_rows(table, "tex")
    assert "|---|---:|---|" in text["md"] and r"\begin{tabular}{lrl}" in text["tex"]


def test_paper_data_has_every_row_the_steps_table_and_the_ablations():
    data = paper_data()
    assert len(data["rows"]) == 10 and all(
        "source" in row and "approximate" in row for row in data["rows"].values()
    )
    assert data["sampler_steps"]["models"]["LDM"]["fid"][10] == pytest.approx(4.51)
    assert set(data["ablations"]) >= {"skip", "time_cond", "conv", "patch_embed", "pos_embed"}
    for axis in data["ablations"].values():
        assert axis["paper_choice"] in axis["values"] and axis["source"]
    for name, choices in ARCHITECTURE_CHOICES.items():  # the paper's choice first, as the model's switches
        assert tuple(data["ablations"][name]["values"]) == choices
        assert data["ablations"][name]["paper_choice"] == choices[0]


def test_ablation_verdict_says_whether_the_papers_ordering_holds():
    from uvit.report import ablation_verdict

    paper = paper_data()["ablations"]["skip"]
    fids = {
        "concat_linear": 100.0,
        "add": 120.0,
        "add_linear_skip": 110.0,
        "linear_of_sum": 115.0,
        "none": 150.0,
    }
    ours = {value: {"fid": fid} for value, fid in fids.items()}
    holds = ablation_verdict("skip", paper, ours)
    assert "best first: concat_linear 100.00, add_linear_skip 110.00" in holds
    assert holds.endswith("The paper's ordering holds at this scale.")
    ours["add"]["fid"] = 90.0
    assert ablation_verdict("skip", paper, ours).endswith(
        "The paper's ordering (concat_linear best and none worst) does not hold at this scale."
    )
    assert "not tested here" in ablation_verdict("skip", paper, {"add": {"fid": 1.0}})


def test_other_metrics_sit_beside_the_papers_with_the_protocol(params):
    """The paper's sFID/IS/precision/recall for U-ViT-H/2 as given; ours from the metrics file, '-' where a metric
    was not computed (or the file predates it); ablation runs stay in their own table."""
    from uvit.report import other_metrics_table

    base = {"model": "m", "scale": "demo", "resolution": 32, "num_samples": 1000, "fid": 9.5}
    metrics = {
        "metrics/fmnist_latent/fid.json": base
        | {
            "experiment": "fmnist_latent",
            "fid_protocol": "clean",
            "sfid": 12.25,
            "precision": 0.5,
            "kid": 0.0125,
        },
        "metrics/fmnist_pixel/fid.json": base | {"experiment": "fmnist_pixel"},  # written before protocols
        "metrics/skip_demo__skip_add/fid.json": base | {"experiment": "skip_demo__skip_add", "sfid": 1.0},
    }
    rows = {row.cells[2] or row.cells[1]: row for row in other_metrics_table(params, metrics).rows}
    h2 = paper_data()["other_metrics"]["imagenet256_uvit_h2"]
    assert rows["U-ViT-H/2"].cells[7:11] == [
        str(h2[k]) for k in ("sfid", "inception_score", "precision", "recall")
    ]
    latent = rows["`fmnist_latent`"]
    assert latent.cells[4:] == ["clean", "1000", "9.50", "12.25", "-", "0.5", "-", "0.0125"]
    assert latent.source == "metrics/fmnist_latent/fid.json"
    assert rows["`fmnist_pixel`"].cells[4] == "-" and "`skip_demo__skip_add`" not in rows


def test_verify_accepts_only_settings_a_record_predates_with_the_value_it_ran():
    """A metrics file written before fid_protocol existed ran clean-fid's clean resize: current 'clean' matches,
    any other protocol is stale; an added metrics list only adds numbers it lacks; any other change is stale."""
    from uvit.verify import settings_differences

    old = {"evaluation": {"reference_images": 32}, "sampling": {"precision": "fp32"}}
    now = {"evaluation": {"reference_images": 32, "fid_protocol": "clean", "metrics": ["sfid"]},
           "sampling": {"precision": "auto"}}  # fmt: skip
    assert settings_differences(old, now) == []
    other = now | {"evaluation": now["evaluation"] | {"fid_protocol": "pytorch_fid"}}
    assert settings_differences(old, other) == [("evaluation.fid_protocol", None, "pytorch_fid")]
    more = now | {"evaluation": now["evaluation"] | {"reference_images": 64}}
    assert settings_differences(old, more) == [("evaluation.reference_images", 32, 64)]


def test_guidance_rows_take_fid_and_accuracy_each_from_its_own_record(params):
    """One row per guidance scale, increasing, the final one marked; FID cells from the FID record, the accuracy
    cells from the accuracy record (what `uvit verify` traces them to), '-' where a scale has no accuracy."""
    from uvit.report import RESULTS_COLUMNS, guidance_table, results_table

    prov = {
        "commit": "c" * 40,
        "dirty": False,
        "inputs": {"checkpoint": {"md5": "a" * 32}, "samples": {"md5": "b" * 32}},
    }

    def fid(scale: float) -> dict:
        return {"experiment": "fmnist_latent", "paper_row": "imagenet256_uvit_l2", "scale": "demo", "resolution": 32,
                "model": "m", "guidance_scale": scale, "sampler": "dpm_solver", "sampler_steps": 25, "fid": 10 + scale,
                "fid_floor": 5.0, "num_samples": 1000, "reference": "2000 train", "training_steps": 600,
                "provenance": prov}  # fmt: skip

    def accuracy(share: float) -> dict:
        return {"classifier": "fmnist_cnn", "classifier_accuracy": share, "classifier_test_accuracy": 0.9012,
                "classifier_test_images": 10000, "classifier_test_split": "test"}  # fmt: skip

    final, zero, one = (
        f"metrics/fmnist_latent/{p}.json" for p in ("fid", "guidance/scale0", "guidance/scale1")
    )
    metrics = {final: fid(0.4), zero: fid(0.0), one: fid(1.0)}
    metrics |= {
        "metrics/fmnist_latent/accuracy.json": accuracy(0.8125),
        zero[:-5] + ".accuracy.json": accuracy(0.5),
    }
    rows = guidance_table(params, metrics).rows
    assert [(r.cells[0], r.cells[3]) for r in rows] == [
        ("`fmnist_latent`", s) for s in ("0.0", "0.4 (final)", "1.0")
    ]
    assert rows[0].cells[5:10] == ["10.00", "5.00", "50.0%", "90.1%", "`fmnist_cnn` (10000 test)"]
    assert rows[0].source == zero and rows[0].source_of("Classifier accuracy") == zero[:-5] + ".accuracy.json"
    assert rows[1].source_of("Classifier's own accuracy") == "metrics/fmnist_latent/accuracy.json"
    assert rows[2].cells[7:10] == ["-", "-", "-"] and rows[2].sources == {one}
    (row,) = [r for r in results_table(params, metrics).rows if r.source == final]
    column = RESULTS_COLUMNS.index("Classifier accuracy")
    assert (
        row.cells[column] == "81.2%"
        and row.source_of("Classifier accuracy") == "metrics/fmnist_latent/accuracy.json"
    )
