"""FID details that mutation testing (benchmarks/mutation.py) found unchecked by tests/test_fid.py (mutation
numbers refer to uvit/fid.py as of main 8830241): a given reference .npz is checked for 2048-d Inception
statistics and stored with its source, and bad images and precisions are refused with messages that say what
was expected. No Inception network is run here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uvit.fid as fid
from uvit.fileio import DataError


def test_a_given_reference_is_checked_for_2048_d_statistics_and_stored_with_its_source(tmp_path):
    rng = np.random.default_rng(0)
    mu, a = rng.normal(size=2048), rng.normal(size=(2048, 4))
    np.savez(tmp_path / "given.npz", mu=mu, sigma=a @ a.T, extra=np.zeros(3))
    fid.import_statistics(tmp_path / "given.npz", tmp_path / "ref.npz", "pytorch_fid")
    with np.load(tmp_path / "ref.npz") as npz:
        assert sorted(npz.files) == ["extra", "mu", "protocol", "sigma", "source"]  # stored whole
        assert str(npz["protocol"]) == "pytorch_fid"
        np.testing.assert_array_equal(npz["mu"], mu)
        np.testing.assert_array_equal(npz["sigma"], a @ a.T)
        assert str(npz["source"]) == str(tmp_path / "given.npz")
    np.savez(tmp_path / "small.npz", mu=mu[:64], sigma=np.eye(64))
    with pytest.raises(DataError, match=r"small\.npz: mu \(64,\) and sigma \(64, 64\) are not 2048-d"):
        fid.import_statistics(tmp_path / "small.npz", tmp_path / "ref2.npz", "clean")
    np.savez(tmp_path / "flat.npz", mu=mu, sigma=np.eye(64))
    with pytest.raises(DataError, match=r"flat\.npz: mu \(2048,\) and sigma \(64, 64\)"):
        fid.import_statistics(tmp_path / "flat.npz", tmp_path / "ref2.npz", "clean")
    assert not (tmp_path / "ref2.npz").exists()


def test_bad_images_and_precisions_are_refused_by_name():
    with pytest.raises(TypeError, match="expected uint8 images, got float32"):
        fid._check_images(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(
        ValueError, match=r"expected N x H x W or N x H x W x 3 images, got shape \(2, 8, 8, 4\)"
    ):
        fid._check_images(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(8, 8\)"):
        fid._check_images(np.zeros((8, 8), np.uint8))
    one_channel = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    np.testing.assert_array_equal(fid._check_images(one_channel), one_channel[..., 0])
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    assert fid._check_images(rgb).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        fid.InceptionFeatureExtractor(precision="fp16")


def test_grey_stored_as_rgb_is_recognised_only_when_all_three_channels_agree():
    grey = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert fid._channels_equal(rgb)
    for channel in (1, 2):
        other = rgb.copy()
        other[1, 2, 3, channel] ^= 1
        assert not fid._channels_equal(other)


def test_an_empty_sample_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no image files found; give the folder `uvit sample` wrote"):
        fid.read_image_folder(tmp_path)


def test_grey_stored_as_rgb_is_resized_once_as_one_plane():
    """clean-fid replicates a grey image to three equal channels; the extractor resizes it once and feeds the
    stem one plane (its first convolution sums the three channels' weights): 1/3 of the resize work."""
    extractor = fid.InceptionFeatureExtractor.__new__(fid.InceptionFeatureExtractor)  # no network needed
    extractor.resizer, extractor.device = fid.BicubicResizer(), torch.device("cpu")
    extractor.protocol = fid.protocol("clean")
    grey = np.random.default_rng(1).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    as_rgb = extractor._prepare(np.repeat(grey[..., None], 3, axis=-1))
    assert as_rgb.shape == (2, 1, 299, 299)
    assert torch.equal(as_rgb, extractor._prepare(grey))
    colour = np.stack([grey, grey, 255 - grey], axis=-1)
    assert extractor._prepare(colour).shape == (2, 3, 299, 299)


def test_a_reference_records_its_protocol_and_is_refused_for_another(tmp_path):
    """reference_arrays keeps both Gaussians, the pool features and the protocol; load_reference hands back what
    the metrics need and refuses a reference made with another protocol, or one that records none."""
    rng = np.random.default_rng(0)
    features = {"pool": rng.random((12, 16)), "spatial": rng.random((12, 8))}
    arrays = fid.reference_arrays(features, "pytorch_fid")
    assert sorted(arrays) == ["features", "mu", "mu_s", "protocol", "sigma", "sigma_s"]
    np.testing.assert_allclose(arrays["mu"], features["pool"].mean(axis=0))
    np.testing.assert_allclose(arrays["sigma"], np.cov(features["pool"], rowvar=False))
    np.testing.assert_allclose(arrays["mu_s"], features["spatial"].mean(axis=0))
    np.testing.assert_allclose(arrays["sigma_s"], np.cov(features["spatial"], rowvar=False))
    assert arrays["features"].dtype == np.float32 and str(arrays["protocol"]) == "pytorch_fid"
    np.testing.assert_array_equal(arrays["features"], features["pool"].astype(np.float32))
    fid.save_statistics(tmp_path / "ref.npz", **arrays)
    assert fid.recorded_protocol(tmp_path / "ref.npz") == "pytorch_fid"
    loaded = fid.load_reference(tmp_path / "ref.npz", ("fid", "sfid", "kid"), protocol_name="pytorch_fid")
    assert sorted(loaded) == ["features", "mu", "mu_s", "sigma", "sigma_s"]
    with pytest.raises(
        DataError, match="made with fid_protocol 'pytorch_fid', the experiment asks for 'clean'"
    ):
        fid.load_reference(tmp_path / "ref.npz", ("fid",), protocol_name="clean")
    np.savez(
        tmp_path / "raw.npz", mu=arrays["mu"], sigma=arrays["sigma"]
    )  # the authors' fid_stats: no protocol
    assert fid.recorded_protocol(tmp_path / "raw.npz") is None
    assert sorted(fid.load_reference(tmp_path / "raw.npz", ("fid",))) == ["mu", "sigma"]
    with pytest.raises(
        DataError, match=r"raw\.npz: records no fid_protocol, the experiment asks for 'clean'"
    ):
        fid.load_reference(tmp_path / "raw.npz", ("fid",), protocol_name="clean")


def test_a_sample_folder_of_mixed_sizes_names_both_sizes(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "a.png")  # 24 wide, 16 high
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(
        DataError, match=r"b\.png: 20x16 pixels, .*a\.png is 24x16; a sample folder holds images"
    ):
        fid.read_image_folder(tmp_path)
