"""Dataset adapters and the prepared format, on real files and on files written in the real formats."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uvit.data import prepare_dataset
from uvit.fileio import DataError
from uvit.shards import SplitData, load_captions, load_split, read_manifest, write_split
from uvit.sources.celeba import celeba_crop
from uvit.sources.cifar10 import load_cifar10
from uvit.sources.common import pad_to
from uvit.sources.digits import load_digits
from uvit.sources.fashion_mnist import load_fashion_mnist, read_idx
from uvit.sources.imagenet import adm_center_crop
from uvit.sources.mscoco import coco_center_crop

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    with gzip.open(tmp_path / "cut.gz", "wb") as f:
        f.write(gzip.decompress((tmp_path / "x.gz").read_bytes())[:-10])
    with pytest.raises(DataError, match=r"cut.gz: truncated IDX file"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make data)"
)
def test_real_fashion_mnist_is_padded_to_32():
    splits = load_fashion_mnist({"root": str(FASHION_MNIST), "resolution": 32})
    images, labels = splits["train"]
    assert images.shape == (60000, 32, 32, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0  # zero border
    assert splits["test"][0].shape == (10000, 32, 32, 1)


def test_missing_fashion_mnist_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "uvit.sources.fashion_mnist._download",
        lambda url, path: (_ for _ in ()).throw(DataError(f"{path}: not found and could not download {url}")),
    )
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_fashion_mnist({"root": str(tmp_path / "nowhere"), "resolution": 32})


def test_wrong_checksum_stops(tmp_path):
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        write_idx(tmp_path / name, np.zeros((2, 28, 28) if "images" in name else (2,), dtype=np.uint8))
    with pytest.raises(DataError, match="checksum differs from the published Fashion-MNIST file"):
        load_fashion_mnist({"root": str(tmp_path), "resolution": 32})


def test_digits_split_and_range():
    splits = load_digits({"resolution": 16})
    assert splits["train"][0].shape == (1500, 16, 16, 1)
    assert splits["test"][0].shape == (297, 16, 16, 1)
    assert splits["train"][0].max() == 255


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"x",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"f"] * n,
    }


def test_cifar10_from_the_official_tarball_layout(tmp_path):
    batches = {f"data_batch_{i}": cifar_batch(4, i) for i in range(1, 6)} | {"test_batch": cifar_batch(3, 9)}
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, batch in batches.items():
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    splits = load_cifar10({"root": str(tmp_path / "cifar-10-python.tar.gz")})
    assert splits["train"][0].shape == (20, 32, 32, 3) and splits["test"][0].shape == (3, 32, 32, 3)
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(splits["train"][0][0, :, :, 0].ravel(), first[:1024])  # channel-major rows


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_arbitrary_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.print"):
        load_cifar10({"root": str(folder)})
    with pytest.raises(DataError, match=r"CIFAR-10: .* not found"):
        load_cifar10({"root": str(tmp_path / "missing")})


def test_prepared_shards_are_byte_identical_and_checked(tmp_path):
    cfg = {"source": "digits", "resolution": 16, "shard_size": 400}
    prepare_dataset(cfg, tmp_path / "a")
    prepare_dataset(cfg, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 2 * 1 + 2  # train: 4 shards of images and labels, test: 1, two manifests
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    images, labels = load_split(tmp_path / "a" / "train")
    assert images.shape == (1500, 16, 16, 1) and labels.shape == (1500,)
    assert load_split(tmp_path / "a" / "train", limit=10)[0].shape[0] == 10
    shard = tmp_path / "a" / "train" / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    with pytest.raises(DataError, match=r"images-00001.npy: checksum mismatch"):
        load_split(tmp_path / "a" / "train")


def test_pad_and_manifest(tmp_path):
    images = np.ones((3, 28, 28, 1), dtype=np.uint8)
    padded = pad_to(images, 32)
    assert padded.shape == (3, 32, 32, 1) and padded.sum() == 3 * 28 * 28
    manifest = write_split(tmp_path, SplitData([(padded, np.array([0, 1, 1]))]), 2, "test")
    assert manifest["class_counts"] == {0: 1, 1: 2} and manifest["count"] == 3
    with pytest.raises(DataError, match="cannot pad"):
        pad_to(images, 27)


# --------------------------------------------------------------------------------------------------------
# Image-folder datasets (CelebA, ImageNet, MS-COCO), on small files written in their real layouts
# --------------------------------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return Image.fromarray(np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


def write_celeba(root: Path, zipped: bool = False) -> None:
    root.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 0, 1, 2], strict=True))
    )
    if zipped:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
            for i, name in enumerate(names):
                buffer = io.BytesIO()
                photo(178, 218, i).save(buffer, "JPEG")
                zf.writestr(f"img_align_celeba/{name}", buffer.getvalue())
    else:
        (root / "img_align_celeba").mkdir()
        for i, name in enumerate(names):
            photo(178, 218, i).save(root / "img_align_celeba" / name, "JPEG")


@pytest.mark.parametrize("zipped", [False, True])
def test_celeba_adapter_crops_like_the_authors(tmp_path, zipped):
    write_celeba(tmp_path / "celeba", zipped)
    cfg = {"source": "celeba", "root": str(tmp_path / "celeba"), "resolution": 64, "shard_size": 2}
    manifests = prepare_dataset(cfg, tmp_path / "out")
    assert {k: m["count"] for k, m in manifests.items()} == {"train": 3, "val": 1, "test": 1}
    images, labels = load_split(tmp_path / "out" / "train")
    assert images.shape == (3, 64, 64, 3) and set(labels) == {0}
    if not zipped:
        decoded = Image.open(tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").convert("RGB")
        expected = np.asarray(decoded)[57 : 57 + 128, 25 : 25 + 128]  # rows 57.., columns 25..
        expected = np.asarray(Image.fromarray(expected).resize((64, 64), Image.BILINEAR))
        np.testing.assert_array_equal(images[1], expected)
        np.testing.assert_array_equal(celeba_crop(decoded), expected)


def test_celeba_without_partition_file_names_the_layout(tmp_path):
    (tmp_path / "celeba").mkdir()
    with pytest.raises(DataError, match=r"list_eval_partition.txt not found.*img_align_celeba"):
        prepare_dataset(
            {"source": "celeba", "root": str(tmp_path / "celeba"), "resolution": 64, "shard_size": 2},
            tmp_path / "o",
        )


def write_imagenet(root: Path) -> None:
    sizes = {"n02000002": [(300, 200), (120, 150)], "n01000001": [(500, 375)]}
    for synset, dims in sizes.items():
        (root / "train" / synset).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            photo(w, h, i).save(root / "train" / synset / f"{synset}_{i}.JPEG", "JPEG")


def test_imagenet_labels_come_from_the_synset_folders_not_the_file_names(tmp_path):
    for synset, names in {
        "n01": ["n01_a.JPEG", "x_b.JPEG"],
        "n02": ["n02_a.JPEG"],
        "n03": ["y_c.JPEG"],
    }.items():
        (tmp_path / "imagenet" / "train" / synset).mkdir(parents=True)
        for i, name in enumerate(names):
            photo(80, 80, i).save(tmp_path / "imagenet" / "train" / synset / name, "JPEG")
    cfg = {"source": "imagenet", "root": str(tmp_path / "imagenet"), "resolution": 32, "shard_size": 10}
    manifest = prepare_dataset(cfg, tmp_path / "out")["train"]
    assert manifest["class_counts"] == {0: 2, 1: 1, 2: 1}  # 3 folders, 3 classes
    photo(80, 80, 0).save(tmp_path / "imagenet" / "train" / "n01_loose.JPEG", "JPEG")
    with pytest.raises(DataError, match=r"n01_loose.JPEG: not directly in a synset folder"):
        prepare_dataset(cfg, tmp_path / "out")


def test_imagenet_adapter_labels_sorted_synsets_and_crops_like_adm(tmp_path):
    write_imagenet(tmp_path / "imagenet")
    cfg = {"source": "imagenet", "root": str(tmp_path / "imagenet"), "resolution": 64, "shard_size": 10}
    manifest = prepare_dataset(cfg, tmp_path / "out")["train"]
    assert manifest["count"] == 3 and manifest["class_counts"] == {0: 1, 1: 2}
    images, labels = load_split(tmp_path / "out" / "train")
    assert images.shape == (3, 64, 64, 3) and list(labels) == [0, 1, 1]  # n01000001 sorts first


def test_adm_center_crop_halves_with_a_box_filter_then_crops_the_center():
    """A 256 x 128 image at size 64: one box halving (2x2 means) to 128 x 64, no resize, center columns 32..96."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    halved = array.reshape(64, 2, 128, 2, 3).astype(np.float64).mean(axis=(1, 3))
    out = adm_center_crop(Image.fromarray(array), 64)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(np.float64) - halved[:, 32:96]).max() <= 1  # PIL rounds the box means


def write_coco(root: Path) -> None:
    for split, ids in (("train2014", [42, 7]), ("val2014", [3])):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i, image_id in enumerate(ids):
            name = f"COCO_{split}_{image_id:012d}.jpg"
            photo(320 + 40 * i, 240, image_id).save(root / split / name, "JPEG")
            images.append({"id": image_id, "file_name": name, "width": 320 + 40 * i, "height": 240})
            for k in range(2 + i):
                annotations.append(
                    {
                        "id": 100 * image_id + k,
                        "image_id": image_id,
                        "caption": f" image {image_id} caption {k}\n",
                    }
                )
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )


def test_mscoco_adapter_keeps_every_caption_in_image_id_order(tmp_path):
    write_coco(tmp_path / "coco")
    cfg = {"source": "mscoco", "root": str(tmp_path / "coco"), "resolution": 64, "shard_size": 10}
    manifests = prepare_dataset(cfg, tmp_path / "out")
    assert manifests["train"]["count"] == 2 and manifests["val"]["count"] == 1
    captions = load_captions(tmp_path / "out" / "train")
    assert captions == [
        [f"image 7 caption {k}" for k in range(3)],
        [f"image 42 caption {k}" for k in range(2)],
    ]
    images, _ = load_split(tmp_path / "out" / "train")
    decoded = Image.open(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000007.jpg").convert("RGB")
    np.testing.assert_array_equal(images[0], coco_center_crop(decoded, 64))
    square = np.asarray(decoded)[:, (360 - 240) // 2 : (360 - 240) // 2 + 240]
    np.testing.assert_array_equal(
        images[0], np.asarray(Image.fromarray(square).resize((64, 64), Image.LANCZOS))
    )


def test_corrupt_image_is_named_or_skipped_and_recorded(tmp_path):
    write_coco(tmp_path / "coco")
    bad = tmp_path / "coco" / "train2014" / "COCO_train2014_000000000007.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated JPEG
    cfg = {"source": "mscoco", "root": str(tmp_path / "coco"), "resolution": 64, "shard_size": 10}
    with pytest.raises(DataError, match=r"COCO_train2014_000000000007.jpg: unreadable image.*skip_corrupt"):
        prepare_dataset(cfg, tmp_path / "out")
    manifest = prepare_dataset(cfg | {"skip_corrupt": True}, tmp_path / "out")["train"]
    assert manifest["count"] == 1 and manifest["skipped"] == {"count": 1, "files": [str(bad)]}
    assert load_captions(tmp_path / "out" / "train") == [[f"image 42 caption {k}" for k in range(2)]]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    cfg = {"source": "imagenet", "root": str(tmp_path / "imagenet"), "resolution": 64, "shard_size": 10}
    with pytest.raises(DataError, match=r"ImageNet: no images under .*train.*one folder per synset"):
        prepare_dataset(cfg, tmp_path / "out")
    with pytest.raises(DataError, match=r"ImageNet: .*nowhere not found. Expected the ILSVRC-2012"):
        prepare_dataset(cfg | {"root": str(tmp_path / "nowhere")}, tmp_path / "out")
    with pytest.raises(DataError, match=r"MS-COCO: .*captions_train2014.json not found"):
        prepare_dataset(
            {"source": "mscoco", "root": str(tmp_path), "resolution": 64, "shard_size": 1}, tmp_path / "o"
        )


def test_image_folder_preparation_is_byte_identical(tmp_path):
    write_imagenet(tmp_path / "imagenet")
    cfg = {"source": "imagenet", "root": str(tmp_path / "imagenet"), "resolution": 32, "shard_size": 2}
    for out in ("a", "b"):
        prepare_dataset(cfg, tmp_path / out)
    files = sorted(p.name for p in (tmp_path / "a" / "train").iterdir())
    assert files == [
        "images-00000.npy",
        "images-00001.npy",
        "labels-00000.npy",
        "labels-00001.npy",
        "manifest.json",
    ]
    for name in files:
        assert (tmp_path / "a" / "train" / name).read_bytes() == (
            tmp_path / "b" / "train" / name
        ).read_bytes()
    assert read_manifest(tmp_path / "a" / "train")["shape"] == [32, 32, 3]


@pytest.mark.parametrize("packed", [False, True])
def test_emoji_adapter_reads_the_npm_package(tmp_path, packed):
    """Captions are the Unicode names (skin-tone variants after their base), every tenth is held out, images
    are the RGBA squares on white at the configured resolution; the .tgz and the folder give the same data."""
    import tarfile

    from conftest import write_emoji_package

    from uvit.sources.emoji import load_emoji

    captions = write_emoji_package(tmp_path / "pkg", count=12)
    root = tmp_path / "pkg"
    if packed:
        with tarfile.open(tmp_path / "emoji.tgz", "w:gz") as archive:
            archive.add(root / "package", arcname="package")
        root = tmp_path / "emoji.tgz"
    splits = load_emoji({"root": str(root), "resolution": 16})
    train_captions = [c for i, c in enumerate(captions) if i % 10 != 9]
    test_captions = [c for i, c in enumerate(captions) if i % 10 == 9]
    assert splits["train"].captions == [[c] for c in train_captions]
    assert splits["test"].captions == [[c] for c in test_captions]
    images, labels = next(iter(splits["train"].chunks))
    assert images.shape == (len(train_captions), 16, 16, 3) and images.dtype == np.uint8
    assert (images == images[:, :1, :1]).all()  # solid squares stay solid through the box filter
    assert labels[0] == 1 and labels[len([c for c in train_captions if c.startswith("test emoji 0")])] == 0


def test_emoji_transparency_becomes_white_and_missing_files_are_named(tmp_path):
    import io

    from conftest import write_emoji_package
    from PIL import Image

    from uvit.fileio import DataError
    from uvit.sources.emoji import emoji_on_white, load_emoji

    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(buffer, format="PNG")
    assert (emoji_on_white(buffer.getvalue(), 32) == 255).all()
    write_emoji_package(tmp_path / "pkg", count=4)
    (tmp_path / "pkg" / "package" / "img" / "google" / "64" / "e002.png").unlink()
    with pytest.raises(DataError, match=r"emoji: image 'e002.png' listed in emoji.json is missing"):
        load_emoji({"root": str(tmp_path / "pkg"), "resolution": 16})
    with pytest.raises(DataError, match=r"not found. Expected the npm package emoji-datasource-google"):
        load_emoji({"root": str(tmp_path / "nowhere.tgz"), "resolution": 16})


def test_shard_rows_read_across_shards_like_the_loaded_arrays(tmp_path):
    """Rows of a split read from the shards on demand equal indexing the concatenated arrays (across shard edges,
    in any order, with an index within each row), pickle without open files, a damaged shard is named before
    anything is read and a cut one when a row beyond its end is asked for."""
    import pickle

    from uvit.shards import ShardRows, read_manifest

    cfg = {"source": "digits", "resolution": 16, "shard_size": 400}
    prepare_dataset(cfg, tmp_path)
    split = tmp_path / "train"
    images, labels = load_split(split)
    rows_of = ShardRows(split, read_manifest(split), "images", "prepare_data")
    assert len(rows_of) == 1500 and rows_of.row_shape == (16, 16, 1) and rows_of.dtype == np.uint8
    rows = np.array([1499, 0, 399, 400, 800, 3, 3, 1200, 799])
    np.testing.assert_array_equal(rows_of.take(rows), images[rows])
    column, channel = np.array([0, 5, 15, 7, 1, 2, 9, 0, 3]), np.zeros(9, dtype=np.int64)
    np.testing.assert_array_equal(rows_of.take(rows, column), images[rows, column])
    np.testing.assert_array_equal(
        rows_of.take(rows, column, column[::-1]), images[rows, column, column[::-1]]
    )
    np.testing.assert_array_equal(
        rows_of.take(rows, column, column, channel), images[rows, column, column, channel]
    )
    np.testing.assert_array_equal(
        ShardRows(split, read_manifest(split), "labels", "prepare_data").all(), labels
    )
    state = pickle.dumps(rows_of)
    assert len(state) < 2000  # paths and offsets, not the images
    np.testing.assert_array_equal(pickle.loads(state).take(rows), images[rows])
    shard = split / "images-00002.npy"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    pattern = r"^\S+images-00002\.npy: checksum mismatch with \S+/train/manifest\.json; re-run prepare_data$"
    with pytest.raises(DataError, match=pattern):
        ShardRows(split, read_manifest(split), "images", "prepare_data")
    shard.write_bytes(shard.read_bytes()[: -16 * 16 * 10])  # the last ten rows cut off
    unchecked = ShardRows(split, read_manifest(split), "images", "prepare_data", verify=False)  # other ranks
    np.testing.assert_array_equal(unchecked.take([800, 1189]), images[[800, 1189]])
    with pytest.raises(
        DataError, match=r"images-00002\.npy: shorter than its manifest says; re-run prepare_data"
    ):
        unchecked.take([1190])
