"""Tests for uvit.fid: equality with clean-fid's "clean" mode, resize, FID sanity, statistics I/O."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uvit import fid
from uvit.fileio import DataError
from uvit.precision import cpu_has_native_bf16

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
REL_TOL = 1e-5


def _grey_images(n: int) -> np.ndarray:
    """n Fashion-MNIST test images padded to 32x32 (synthetic blobs if the data is absent)."""
    if FMNIST.exists():
        with gzip.open(FMNIST, "rb") as fh:
            raw = np.frombuffer(fh.read(16 + n * 784), dtype=np.uint8, offset=16)
        return np.pad(raw.reshape(n, 28, 28), ((0, 0), (2, 2), (2, 2)))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    imgs = [
        255 * np.exp(-((yy - rng.uniform(8, 24)) ** 2 + (xx - rng.uniform(8, 24)) ** 2) / rng.uniform(10, 60))
        for _ in range(n)
    ]
    return np.stack(imgs).round().astype(np.uint8)


def _rgb_images(n: int, size: int = 28) -> np.ndarray:
    """Smooth random colour images (odd size, different from the grey set)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (n, 7, 7, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BILINEAR)) for s in small])


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _cleanfid_features(folder: Path) -> np.ndarray:
    from cleanfid.fid import get_folder_features

    return get_folder_features(
        str(folder),
        model=fid.cleanfid_feature_fn(_script()),
        num_workers=0,
        batch_size=16,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )


_SCRIPT: list = []


def _script():
    if not _SCRIPT:
        _SCRIPT.append(fid.load_torchscript_inception())
    return _SCRIPT[0]


@pytest.fixture(scope="module")
def extractor() -> fid.InceptionFeatureExtractor:
    return fid.InceptionFeatureExtractor(batch_size=16)


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return _grey_images(24)


@pytest.fixture(scope="module")
def grey_features(extractor, grey) -> np.ndarray:
    return extractor(grey)


def _save_pngs(images: np.ndarray, folder: Path) -> None:
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")


# ---------------------------------------------------------------- resize
@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (17, 40), (64, 48), (300, 320), (299, 299)])
def test_resize_matches_pil_float_bicubic(shape):
    rng = np.random.default_rng(sum(shape))
    planes = rng.integers(0, 256, (2, *shape)).astype(np.uint8)
    ours = fid.BicubicResizer()(planes).numpy()
    for plane, out in zip(planes, ours, strict=True):
        np.testing.assert_allclose(out, fid.pil_resize_reference(plane), rtol=0, atol=1e-4)


def test_resize_matrix_rows_sum_to_one():
    for n_in in (5, 28, 299, 600):
        np.testing.assert_allclose(fid.pil_bicubic_matrix(n_in, 299).sum(1), 1.0, atol=1e-12)


# ---------------------------------------------------------------- features vs clean-fid
def test_grey_features_match_cleanfid(tmp_path, extractor, grey, grey_features):
    subset = grey[:12]
    _save_pngs(subset, tmp_path)
    ref = _cleanfid_features(tmp_path)
    assert ref.shape == (12, fid.FEATURE_DIM)
    assert _rel_diff(grey_features[:12], ref) < REL_TOL
    # Same images through the folder reader (RGB with equal channels).
    from_folder = extractor(fid.read_image_folder(tmp_path))
    assert from_folder.dtype == np.float64
    assert _rel_diff(from_folder, ref) < REL_TOL


def test_rgb_features_match_cleanfid(tmp_path, extractor):
    images = _rgb_images(8)
    _save_pngs(images, tmp_path)
    ref = _cleanfid_features(tmp_path)
    ours = extractor(images)
    assert ours.shape == (8, fid.FEATURE_DIM)
    assert _rel_diff(ours, ref) < REL_TOL
    one_by_one = fid.InceptionFeatureExtractor(batch_size=1)(images[:2])
    assert _rel_diff(one_by_one, ref[:2]) < REL_TOL


@pytest.mark.skipif(
    not cpu_has_native_bf16(),
    reason="bf16 is emulated on this CPU (no AVX512-BF16/AMX): its features are off by ~24% here, not comparable",
)
def test_bf16_is_close_but_not_exact(extractor, grey, grey_features):
    bf16 = fid.InceptionFeatureExtractor(precision="bf16", batch_size=8)(grey[:4])
    assert _rel_diff(bf16, grey_features[:4]) < 0.1


def test_rejects_bad_input(extractor):
    with pytest.raises(TypeError):
        extractor(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        extractor(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        fid.InceptionFeatureExtractor(precision="fp16")


def test_progress_bar_goes_to_stderr(extractor, grey, capsys):
    extractor.features(grey[:2], progress=True, desc="probe")
    captured = capsys.readouterr()
    assert "probe" in captured.err and "img/s" in captured.err


# ---------------------------------------------------------------- folder reading
def test_read_image_folder_order_matches_cleanfid(tmp_path):
    from glob import glob

    from cleanfid.fid import EXTENSIONS

    (tmp_path / "sub").mkdir()
    imgs = _grey_images(4)
    Image.fromarray(imgs[0]).save(tmp_path / "b.png")
    Image.fromarray(imgs[1]).save(tmp_path / "a.png")
    Image.fromarray(imgs[2]).save(tmp_path / "sub" / "c.png")
    Image.fromarray(np.stack([imgs[3]] * 3, -1)).save(tmp_path / "d.jpg", quality=95)
    theirs = sorted(
        f for ext in EXTENSIONS for f in glob(os.path.join(str(tmp_path), f"**/*.{ext}"), recursive=True)
    )
    assert fid.list_image_files(tmp_path) == theirs
    arr = fid.read_image_folder(tmp_path)
    assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[0, ..., 0], imgs[1])  # a.png first


# ---------------------------------------------------------------- FID sanity
# The noise and fid_from_images checks use the 16 highest-variance feature dimensions (full rank
# with 24 images); the self-FID check runs on all 2048.
def _top_dims(features: np.ndarray, k: int = 16) -> np.ndarray:
    return np.argsort(features.var(0))[::-1][:k]


def test_fid_of_set_against_itself_is_zero(grey_features):
    f = grey_features[:, _top_dims(grey_features)]
    mu, sigma = fid.feature_statistics(f)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_fid_of_set_against_itself_is_zero_full_2048(grey_features):
    mu, sigma = fid.feature_statistics(grey_features)  # singular: 24 images < 2048 dims
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-3 * np.trace(sigma)


@pytest.mark.parametrize(("n1", "n2", "dim"), [(1500, 1200, 512), (300, 100, 512)])
def test_frechet_distance_equals_cleanfid_sqrtm(n1, n2, dim):
    """Our eigen-decomposition form against clean-fid's scipy sqrtm, full-rank and singular (n < dim; 512
    dimensions: scipy's sqrtm of a 2048 x 2048 matrix takes a minute on one core)."""
    from cleanfid.fid import frechet_distance as cleanfid_distance

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((64, dim)) * 0.1

    def stats(n, shift):
        x = np.abs(rng.standard_normal((n, 64)) @ mixing + 0.3 * rng.standard_normal((n, dim)) + shift)
        return fid.feature_statistics(x)

    a, b = stats(n1, 0.0), stats(n2, 0.05)
    assert fid.frechet_distance(*a, *b) == pytest.approx(cleanfid_distance(*a, *b), rel=1e-6)


@pytest.mark.parametrize("count", [16, 300, 511, 512, 513, 1200])
def test_frechet_distance_to_features_equals_the_distance_of_their_statistics(count):
    """The N x N route (fewer images than dimensions) and its fall-back: clean-fid's sqrtm is the reference."""
    from cleanfid.fid import frechet_distance as cleanfid_distance

    rng = np.random.default_rng(count)
    mixing = rng.standard_normal((64, 512)) * 0.1
    reference = fid.feature_statistics(
        np.abs(rng.standard_normal((900, 64)) @ mixing + rng.random((900, 512)))
    )
    features = np.abs(rng.standard_normal((count, 64)) @ mixing + 0.3 * rng.random((count, 512)) + 0.05)
    expected = cleanfid_distance(*fid.feature_statistics(features), *reference)
    assert fid.frechet_distance_to_features(features, *reference) == pytest.approx(expected, rel=1e-6)
    # the D x D route (it adds the square roots of the singular product's round-off eigenvalues: ~3e-8 relative)
    ours = fid.frechet_distance(*fid.feature_statistics(features), *reference)
    assert fid.frechet_distance_to_features(features, *reference) == pytest.approx(ours, rel=1e-7)
    assert fid.frechet_distance_to_features(features.astype(np.float32), *reference) == pytest.approx(
        ours, rel=1e-6
    )
    with pytest.raises(ValueError, match="differ in shape"):
        fid.frechet_distance_to_features(features[:, :100], *reference)


def test_fid_grows_with_noise(extractor, grey, grey_features):
    grey, grey_features = grey[:12], grey_features[:12]  # 3 x 12 noisy images through Inception
    dims = _top_dims(grey_features)
    mu0, sigma0 = fid.feature_statistics(grey_features[:, dims])
    rng = np.random.default_rng(0)
    noisy = [
        np.clip(grey + rng.normal(0, std, grey.shape), 0, 255).round().astype(np.uint8)
        for std in (10, 20, 40)
    ]
    feats = extractor(np.concatenate(noisy)).reshape(3, len(grey), -1)[..., dims]
    fids = [fid.frechet_distance(*fid.feature_statistics(f), mu0, sigma0) for f in feats]
    assert 0 < fids[0] < fids[1] < fids[2], fids


def test_fid_from_images_matches_manual(extractor, grey, grey_features):
    # A few feature dimensions keep sqrtm cheap; the reference is the first 12 images.
    dims = _top_dims(grey_features, 4)

    class FewDims:
        def features(self, images, progress=False):
            return extractor(images)[:, dims]

    mu, sigma = fid.feature_statistics(grey_features[:12, dims])
    expected = fid.frechet_distance(*fid.feature_statistics(grey_features[12:, dims]), mu, sigma)
    assert fid.fid_from_images(grey[12:], mu, sigma, FewDims()) == pytest.approx(expected, rel=1e-6)


def test_feature_statistics_like_cleanfid():
    feats = np.random.default_rng(0).normal(size=(10, 5))
    mu, sigma = fid.feature_statistics(feats)
    np.testing.assert_array_equal(mu, np.mean(feats, axis=0))
    np.testing.assert_array_equal(sigma, np.cov(feats, rowvar=False))


# ---------------------------------------------------------------- statistics files
def test_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, a = rng.normal(size=6), rng.normal(size=(6, 6))
    sigma = a @ a.T
    path = tmp_path / "stats" / "ref.npz"
    fid.save_statistics(path, mu, sigma, count=123, mode="clean")
    mu2, sigma2 = fid.load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    with np.load(path) as data:  # the ADM / authors' layout plus metadata
        assert {"mu", "sigma", "count"} <= set(data.files) and int(data["count"]) == 123
    assert os.listdir(path.parent) == ["ref.npz"]  # no temporary files left behind


def test_load_statistics_names_missing_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, mu=np.zeros(3), cov=np.eye(3))
    with pytest.raises(DataError, match=r"bad\.npz: no key .sigma."):
        fid.load_statistics(path)


def test_weights_path_exists():
    assert fid.inception_weights_path().is_file()
