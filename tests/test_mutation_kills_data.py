"""Data-stage details that mutation testing (benchmarks/mutation.py) found unchecked: IDX dimensions read as
32-bit big-endian integers (the MNIST format's definition), the Fashion-MNIST download and its messages, the
default CIFAR-10 location, and the message of an unreadable JSON file. Network access is replaced by a fake
urlopen; all files are a few KB.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_data import write_idx

from uvit.fileio import DataError, read_json
from uvit.sources import fashion_mnist
from uvit.sources.fashion_mnist import read_idx

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def test_idx_dimensions_are_32_bit_big_endian_integers(tmp_path):
    """The IDX header: magic 0 0 8 ndim, then ndim 4-byte big-endian sizes; a size above 65535 needs all 4."""
    array = np.arange(70_000, dtype=np.int64).astype(np.uint8).reshape(1, 1, 70_000)
    write_idx(tmp_path / "wide.gz", array)
    assert read_idx(tmp_path / "wide.gz").shape == (1, 1, 70_000)
    np.testing.assert_array_equal(read_idx(tmp_path / "wide.gz"), array)


def test_missing_fashion_mnist_without_download_names_all_four_files(tmp_path):
    with pytest.raises(DataError) as err:
        fashion_mnist.ensure_fashion_mnist(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert message.startswith(f"Fashion-MNIST: {tmp_path / 'nowhere' / FILES[0]} not found")
    assert all(name in message for name in FILES) and "apt-get install dataset-fashion-mnist" in message
    assert fashion_mnist.FASHION_MNIST_URL in message


class Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_missing_file_is_downloaded_from_the_official_url_then_checked(tmp_path, monkeypatch):
    calls = []

    def urlopen(url, timeout):
        calls.append((url, timeout))
        return Response(b"not the published file")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="checksum differs from the published Fashion-MNIST file"):
        fashion_mnist.ensure_fashion_mnist(tmp_path / "fm")
    assert calls == [(fashion_mnist.FASHION_MNIST_URL + FILES[0], 60)]
    assert (tmp_path / "fm" / FILES[0]).read_bytes() == b"not the published file"

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(
        DataError, match=r"t10k.* not found and could not download https?://\S+ \(network unreachable\)"
    ):
        fashion_mnist._download(fashion_mnist.FASHION_MNIST_URL + FILES[2], tmp_path / FILES[2])
    assert not (tmp_path / FILES[2]).exists()


def test_a_dataset_that_reads_raw_files_must_say_where(tmp_path):
    """params.yaml names each raw root (the adapters keep no default of their own); only digits needs none."""
    from conftest import raw_test_params

    from uvit.config import ConfigError, load_params

    params = raw_test_params()
    del params["datasets"]["cifar10"]["root"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    schema = Path(__file__).parents[1] / "workflow/schemas/params.schema.yaml"
    with pytest.raises(ConfigError, match=r"datasets\.cifar10: 'root' is a required property"):
        load_params(tmp_path / "params.yaml", schema_path=schema)
    assert "root" not in params["datasets"]["digits"]


def test_an_unreadable_json_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "m.json").write_text('{"fid": ')
    with pytest.raises(DataError, match=r"m\.json: not a readable JSON file \(.*\); run it again$"):
        read_json(tmp_path / "m.json", "run it again")
    (tmp_path / "l.json").write_text("[1]")
    with pytest.raises(DataError, match=r"l\.json: expected a JSON object, found list; run it again$"):
        read_json(tmp_path / "l.json", "run it again")
    (tmp_path / "d.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "d.json", "") == {"a": 1}
