"""Provenance hashes equal DVC's own; metrics record commit and dirtiness."""

from __future__ import annotations

import subprocess

from conftest import ROOT, run

from uvit.provenance import dvc_md5, git_state


def test_dvc_md5_equals_dvc_for_files_and_directories(tmp_path):
    """Snakemake's marker in a directory output is left out, as the project's .dvcignore tells DVC."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha\n")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (tmp_path / "d" / ".snakemake_timestamp").write_text("")
    (tmp_path / "f.txt").write_text("file\r\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run(["dvc", "init", "-q"], tmp_path)
    (tmp_path / ".dvcignore").write_bytes((ROOT / ".dvcignore").read_bytes())
    run(["dvc", "add", "-q", "d", "f.txt"], tmp_path)
    import yaml

    for name in ("d", "f.txt"):
        recorded = yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]["md5"]
        assert dvc_md5(tmp_path / name) == recorded


def test_git_state_reports_commit_and_dirtiness(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "m.json").write_text("{}\n")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], cwd=tmp_path, check=True
    )
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "metrics" / "m.json").write_text('{"fid": 1}\n')  # generated outputs do not count
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
