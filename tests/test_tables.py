"""Tables as data (rows built by column name) and their two renderings: what `uvit verify` parses back must be
what was rendered."""

from __future__ import annotations

import re

import pytest

from uvit.render import latex, render
from uvit.tables import Table, TableError, paper_data
from uvit.verify import expected_rows, latex_rows, markdown_rows
from uvit.zoo import ARCHITECTURE_CHOICES


def test_latex_escapes_and_converts_inline_markdown():
    assert latex("`fmnist_pixel`") == r"\texttt{fmnist\_pixel}"
    assert latex("**demo** (32x32)") == r"\textbf{demo} (32x32)"
    assert latex("50% & #1 $") == r"50\% \& \#1 \$"
    assert latex("↳") == r"$\hookrightarrow$"


def test_rendered_cells_parse_back_in_both_formats():
    table = Table("t", "A table", ["A note."], ["Name", "FID", "Command"], ["FID"], main_column="FID")
    table.add({"Name": "`a_b`", "FID": "3.11 (approx.)", "Command": "`snakemake --cores all x & y`"},
              source="metrics/a/fid.json")  # fmt: skip
    table.add({"Name": "↳"})
    table.add({"Name": "**demo**", "FID": "-", "Command": "100%"})
    assert table.rows[1].cells == ["↳", "", ""]
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


SKIP = paper_data()["ablations"]["skip"]  # the paper: concat_linear best, none worst


def skip_fids(**by_value: list[float]) -> dict[str, list[float]]:
    """value -> seeds' FIDs for every long-skip value (empty: not run), in the switch's order."""
    return {value: by_value.get(value, []) for value in map(str, SKIP["values"])}


def test_the_interval_is_the_t_interval_of_the_mean_over_seeds():
    from uvit.tables import interval_cell, mean_interval

    low, high = mean_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t(0.975, 2) = 4.3027
    assert (low, high) == pytest.approx((2 - 4.30265 / 3**0.5, 2 + 4.30265 / 3**0.5), abs=1e-4)
    assert mean_interval([5.0]) is None and mean_interval([]) is None
    assert interval_cell([5.0]) == "1 seed, no interval" and interval_cell([]) == "-"
    assert interval_cell([1.0, 2.0, 3.0]) == "[-0.48, 4.48]"


def test_a_clear_gap_the_papers_way_holds():
    from uvit.tables import ablation_verdict

    fids = skip_fids(concat_linear=[100, 101, 102], add=[120, 121, 122], add_linear_skip=[110, 112, 111],
                     linear_of_sum=[115, 114, 116], none=[150, 152, 151])  # fmt: skip
    verdict, sentence = ablation_verdict("skip", SKIP, fids)
    assert verdict == "holds" and sentence.startswith("**skip**: holds. Paper: Linear(Concat")
    assert "best first: concat_linear 101.00 in [98.52, 103.48], add_linear_skip 111.00" in sentence


def test_a_clear_gap_the_other_way_is_reversed():
    from uvit.tables import ablation_verdict, ordering_verdict

    fids = skip_fids(concat_linear=[150, 151, 152], add=[100, 101, 102], add_linear_skip=[149, 151, 153],
                     linear_of_sum=[150, 152, 154], none=[200, 201, 202])  # fmt: skip
    assert ordering_verdict(SKIP, fids) == ("reversed", "add's interval lies wholly below concat_linear's")
    # The paper's worst clearly better than another value reverses the ordering too.
    fids = skip_fids(concat_linear=[100, 101, 102], add=[160, 161, 162], none=[140, 141, 142])
    verdict, sentence = ablation_verdict("skip", SKIP, fids)
    assert verdict == "reversed" and "none's interval lies wholly below add's" in sentence


def test_overlapping_intervals_are_inconclusive_whatever_the_means_ranking():
    from uvit.tables import ordering_verdict

    # concat_linear has the best mean and none the worst, but the seeds' spread swallows the gaps.
    fids = skip_fids(concat_linear=[100, 130, 115], add=[110, 140, 125], add_linear_skip=[112, 138, 120],
                     linear_of_sum=[111, 139, 126], none=[120, 150, 135])  # fmt: skip
    verdict, why = ordering_verdict(SKIP, fids)
    assert verdict == "inconclusive" and why.startswith("the intervals of concat_linear and add, ")


def test_one_seed_is_inconclusive_even_when_its_ranking_agrees_with_the_paper():
    from uvit.tables import ablation_verdict, ordering_verdict

    ranked = skip_fids(concat_linear=[100], add=[120], add_linear_skip=[110], linear_of_sum=[115], none=[300])
    verdict, sentence = ablation_verdict("skip", SKIP, ranked)
    assert verdict == "inconclusive" and "concat_linear 100.00 (1 seed, no interval)" in sentence
    assert "no interval for concat_linear, add, add_linear_skip, linear_of_sum, none" in sentence
    # Clear intervals everywhere but one value seen once: nothing can say the paper's choice beats it.
    partial = skip_fids(concat_linear=[100, 101, 102], add=[120, 121, 122], add_linear_skip=[140],
                        linear_of_sum=[115, 114, 116], none=[150, 152, 151])  # fmt: skip
    assert ordering_verdict(SKIP, partial) == (
        "inconclusive",
        "no interval for add_linear_skip (fewer than two seeds run)",
    )
    assert ordering_verdict(SKIP, skip_fids())[0] == "inconclusive"
    other = {"add": [1.0, 1.1, 1.2], "add_linear_skip": [3.0, 3.1, 3.2]}  # neither the paper's best nor worst
    assert ordering_verdict(SKIP, other) == (
        "inconclusive",
        "the paper's choice (concat_linear) is not a value of this grid",
    )


def fid_record(name: str, fid: float) -> dict:
    prov = {"commit": "0123456789abcdef", "dirty": False,
            "inputs": {"checkpoint": {"md5": "c" * 32}, "samples": {"md5": "d" * 32}}}  # fmt: skip
    return {"experiment": name, "fid": fid, "fid_floor": 34.0, "training_steps": 400, "num_samples": 500,
            "sampler": "dpm_solver", "sampler_steps": 25, "provenance": prov}  # fmt: skip


def test_ablation_table_gives_mean_interval_and_verdict_and_says_not_run_for_missing_seeds(params):
    """skip_demo with three seeds of add and concat_linear, one of none, the rest not run: a row per value (seeds
    run, mean, interval; the verdict on the axis's first row), a row per seed (its FID and hashes, or 'not
    run'), each seed's row traced to its metrics file; both renderings parse back to the same cells."""
    from uvit.tables import ablation_table, optional_metrics_files

    run = {"concat_linear": [100, 101, 102], "add": [120, 121, 122], "none": [150]}
    metrics = {
        f"metrics/skip_demo__skip_{v}__seed{s}/fid.json": fid_record(f"skip_demo__skip_{v}__seed{s}", fid)
        for v, fids in run.items()
        for s, fid in enumerate(fids)
    }
    assert set(metrics) <= optional_metrics_files(params)
    table = ablation_table(params, metrics)
    rows = {(r.cells[1], r.cells[7]): r for r in table.rows}  # (value, seed); a value's own row has seed ''
    concat = rows["`concat_linear`", ""]
    assert concat["Paper's choice"] == "yes" and concat["Seeds"] == "3"
    assert concat["Mean FID"] == "101.00" and concat["95% interval"] == "[98.52, 103.48]"
    assert concat["Verdict (axis)"] == "inconclusive"  # none and two others lack intervals
    assert len(concat.sources) == 3 and concat.source is None
    assert rows["`none`", ""].cells[3:7] == ["1 of 3", "150.00", "1 seed, no interval", ""]
    assert rows["`linear_of_sum`", ""].cells[3:6] == ["not run", "-", "-"]
    seeds = [r for r in table.rows if r.cells[0] == "↳"]
    assert len(seeds) == 15 and sum(r.cells[8] == "not run" for r in seeds) == 15 - 7
    first = next(r for r in seeds if r.source)
    assert first.source == "metrics/skip_demo__skip_concat_linear__seed0/fid.json"
    assert first.cells[7:] == ["0", "100.00", "34.00", "400", "500", "dpm_solver 25", "`cccccccc`", "`dddddddd`",
                               "`01234567`"]  # fmt: skip
    assert any(note.startswith("`skip_demo`, **skip**: inconclusive.") for note in table.notes)
    text = render(table)
    assert markdown_rows(text["md"]) == expected_rows(table, "md")
    assert latex_rows(text["tex"]) == expected_rows(table, "tex")


def test_other_metrics_sit_beside_the_papers_with_the_protocol(params):
    """The paper's sFID/IS/precision/recall for U-ViT-H/2 as given; ours from the metrics file, '-' where a metric
    was not computed (or the file predates it); ablation runs stay in their own table."""
    from uvit.tables import other_metrics_table

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
        "metrics/skip_demo__skip_add__seed0/fid.json": base
        | {"experiment": "skip_demo__skip_add__seed0", "sfid": 1.0},
    }
    rows = {row.cells[2] or row.cells[1]: row for row in other_metrics_table(params, metrics).rows}
    h2 = paper_data()["other_metrics"]["imagenet256_uvit_h2"]
    assert rows["U-ViT-H/2"].cells[7:11] == [
        str(h2[k]) for k in ("sfid", "inception_score", "precision", "recall")
    ]
    latent = rows["`fmnist_latent`"]
    assert latent.cells[4:] == ["clean", "1000", "9.50", "12.25", "-", "0.5", "-", "0.0125"]
    assert latent.source == "metrics/fmnist_latent/fid.json"
    assert rows["`fmnist_pixel`"].cells[4] == "-" and "`skip_demo__skip_add__seed0`" not in rows


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
    from uvit.tables import guidance_table, results_table

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
    # params.yaml: fmnist_latent samples at guidance 3.0 and sweeps [0, 1]
    metrics = {final: fid(3.0), zero: fid(0.0), one: fid(1.0)}
    metrics |= {
        "metrics/fmnist_latent/accuracy.json": accuracy(0.8125),
        zero[:-5] + ".accuracy.json": accuracy(0.5),
    }
    rows = guidance_table(params, metrics).rows
    assert [(r.cells[0], r.cells[3]) for r in rows] == [
        ("`fmnist_latent`", s) for s in ("0.0", "1.0", "3.0 (final)")
    ]
    assert rows[0].cells[5:10] == ["10.00", "5.00", "50.0%", "90.1%", "`fmnist_cnn` (10000 test)"]
    assert rows[0].source == zero and rows[0].origin_of("Classifier accuracy") == zero[:-5] + ".accuracy.json"
    assert rows[2].origin_of("Classifier's own accuracy") == "metrics/fmnist_latent/accuracy.json"
    assert rows[1].cells[7:10] == ["-", "-", "-"] and rows[1].every_source == {one}
    (row,) = [r for r in results_table(params, metrics).rows if r.source == final]
    assert row["Classifier accuracy"] == "81.2%"
    assert row.origin_of("Classifier accuracy") == "metrics/fmnist_latent/accuracy.json"


def test_autoencoder_rows_put_rfid_beside_the_floor_at_the_same_count(params):
    """One row per trained autoencoder of the targets (each once, though several experiments might share it),
    the latent shape from its settings, rFID / floor computed, '-' for a record that predates the floor."""
    from uvit.tables import AUTOENCODER_COLUMNS, autoencoder_table

    def record(name: str, **extra) -> dict:
        prov = {"commit": "d" * 40, "dirty": False, "inputs": {}}
        return {"autoencoder": name, "heldout_images": 500, "psnr_db": 25.5, "rfid": 60.0, **extra,
                "provenance": prov}  # fmt: skip

    metrics = {
        "metrics/autoencoders/fmnist_kl.json": record("fmnist_kl", floor_fid=40.0, reconstructions_fid=70.5),
        "metrics/autoencoders/emoji_kl.json": record("emoji_kl"),
        "metrics/autoencoders/digits_kl.json": record("digits_kl", floor_fid=1.0),  # no target uses it
    }
    rows = autoencoder_table(params, metrics).rows
    assert [r.source for r in rows] == [
        "metrics/autoencoders/emoji_kl.json",
        "metrics/autoencoders/fmnist_kl.json",
    ]
    cells = dict(zip(AUTOENCODER_COLUMNS, rows[1].cells, strict=True))
    ae = params["autoencoders"]["fmnist_kl"]
    side = 32 // (ae["space_to_depth"] * 2 ** (len(ae["block_channels"]) - 1))
    assert cells["Latent"] == f"{ae['latent_channels']}x{side}x{side}" and cells["Training steps"] == str(
        ae["steps"]
    )
    assert [cells[c] for c in ("PSNR (dB)", "rFID", "FID floor", "rFID / floor", "Reconstructions' FID")] == [
        "25.50", "60.00", "40.00", "1.50", "70.50"
    ]  # fmt: skip
    assert rows[0].cells[7:10] == ["-", "-", "-"] and cells["Commit"] == "`dddddddd`"


def test_a_traceability_error_in_an_autoencoder_record_names_its_rfid_cell(params, tmp_path):
    """`uvit verify` points at the cell a record's number sits in: 'Our FID' in the FID tables, 'rFID' in the
    autoencoders table, which has no 'Our FID' column."""
    from uvit.tables import autoencoder_table
    from uvit.verify import first_cell

    source = "metrics/autoencoders/fmnist_kl.json"
    table = autoencoder_table(params, {})  # the real table, one constructed row
    table.add(dict.fromkeys(table.columns, "x") | {"Autoencoder": "`fmnist_kl`"}, source=source)
    cell = first_cell([table], source, tmp_path)
    assert (
        str(cell)
        == f"{tmp_path}/paper_tables/autoencoders.md: row 1 (`fmnist_kl` / x / x / x / x / x), column 'rFID'"
    )


def small_table() -> Table:
    return Table("t", "A table", [], ["Name", "FID", "Commit"], ["FID"], main_column="FID")


def test_a_row_is_built_by_column_name_and_unnamed_columns_are_empty():
    table = small_table()
    row = table.add({"Commit": "`0123abcd`", "Name": "`a`"})  # any order; FID not named
    assert row.cells == ["`a`", "", "`0123abcd`"] and row["FID"] == ""
    with pytest.raises(KeyError, match="no column 'Our FID'"):
        row["Our FID"]


def test_a_cell_named_for_a_column_the_table_lacks_is_a_one_line_error_naming_both():
    table = small_table()
    with pytest.raises(TableError) as err:
        table.add({"Name": "`a`", "Our FID": "3.00"})
    message = str(err.value)
    assert message.startswith("table t: cell 'Our FID' is not one of its columns (Name, FID, Commit)")
    assert "\n" not in message and table.rows == []
    with pytest.raises(TableError, match="table t: cell source 'Accuracy' is not one of its columns"):
        table.add({"Name": "`a`"}, cell_sources={"Accuracy": "metrics/a/accuracy.json"})


def test_a_row_needs_its_name_and_a_traced_row_its_main_cell():
    """Every row names itself in the first column (how `uvit verify` names it); a row traced to a metrics file
    fills the main column (the cell `uvit verify` points at when that file does not check out)."""
    table = small_table()
    with pytest.raises(TableError, match="table t: a row needs its 'Name' cell"):
        table.add({"FID": "3.00"})
    with pytest.raises(
        TableError, match=re.escape("table t: the row from metrics/a/fid.json needs its 'FID'")
    ):
        table.add({"Name": "`a`", "FID": ""}, source="metrics/a/fid.json")
    with pytest.raises(TableError, match=re.escape("table t: cell 'FID' is 3.0, not text")):
        table.add({"Name": "`a`", "FID": 3.0})
    # A row with no metrics file behind it (paper data, 'not run') may leave its main cell empty.
    table.add({"Name": "`a`"})
    assert table.rows[0].cells == ["`a`", "", ""]


def test_a_table_names_only_columns_it_has():
    with pytest.raises(TableError, match="table t: main column 'Our FID' is not one of its columns"):
        Table("t", "A table", [], ["Name", "FID"], ["FID"])  # main_column defaults to 'Our FID'
    with pytest.raises(TableError, match="table t: numeric column 'Samples' is not one of its columns"):
        Table("t", "A table", [], ["Name", "FID"], ["Samples"], main_column="FID")
    with pytest.raises(TableError, match="table t: column 'FID' given twice"):
        Table("t", "A table", [], ["Name", "FID", "FID"], [], main_column="FID")


def test_every_rendered_row_has_a_cell_per_column(params):
    """Each table of params.yaml with no metrics (every experiment 'not run'), in both renderings: a row with a
    cell too few would shift the cells after it. The 'not run' rows give the command that runs them last."""
    from uvit.tables import build_tables

    for table in build_tables(params, {}):
        text = render(table)
        for rows in (markdown_rows(text["md"]), latex_rows(text["tex"])):
            assert {len(row) for row in rows} == {len(table.columns)}, table.name
    results = build_tables(params, {})[0]
    not_run = [row for row in results.rows if row["Our FID"] == "not run"]
    assert {row["Scale"]: row["Commit"] for row in not_run}["demo"] == "`make demo-full`"
    assert all(row["Commit"].startswith(("`make", "`snakemake")) for row in not_run)
