"""Noto emoji (Google's 64x64 images) captioned with their Unicode names: a small text-to-image dataset."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from uvit.fileio import DataError
from uvit.shards import SplitData
from uvit.sources.common import require

EMOJI_LAYOUT = (
    "the npm package emoji-datasource-google in datasets.<name>.root: the tarball `npm pack "
    "emoji-datasource-google@16.0.0` writes (`make data` fetches it), or its extracted package/ folder with "
    "emoji.json and img/google/64/"
)
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def emoji_entries(meta: list[dict]) -> list[tuple[str, str, str]]:
    """(image file, caption, category) of every emoji with a Google image and of each of its skin-tone
    variants, in the package's sort order. The caption is the Unicode name, lower case ("grinning face"),
    with the tones of a variant ("waving hand sign, medium skin tone")."""
    entries = []
    for emoji in sorted(meta, key=lambda e: e["sort_order"]):
        if not emoji.get("has_img_google"):
            continue
        name = emoji["name"].lower()
        entries.append((emoji["image"], name, emoji["category"]))
        for tones, variant in sorted(emoji.get("skin_variations", {}).items()):
            if variant.get("has_img_google"):
                tone_names = dict.fromkeys(SKIN_TONES.get(t, t) for t in tones.split("-"))
                entries.append((variant["image"], f"{name}, {' and '.join(tone_names)}", emoji["category"]))
    return entries


def emoji_on_white(png: bytes, resolution: int) -> np.ndarray:
    """An RGBA emoji composited on white, box-filtered to resolution x resolution RGB."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    return np.asarray(canvas.convert("RGB").resize((resolution, resolution), Image.BOX))


def _emoji_files(root: Path) -> tuple[list[dict], Callable[[str], bytes]]:
    """emoji.json and a reader of img/google/64/<file>, from the npm tarball or the extracted package."""
    if root.is_dir():
        package = root / "package" if (root / "package").is_dir() else root
        meta = json.loads(require(package / "emoji.json", "emoji", EMOJI_LAYOUT).read_text())
        return meta, lambda name: (package / "img" / "google" / "64" / name).read_bytes()
    require(root, "emoji", EMOJI_LAYOUT)
    with tarfile.open(root, "r:gz") as archive:  # one pass: random access into a .tgz rereads it
        members = {
            m.name: archive.extractfile(m).read()
            for m in archive
            if m.isfile() and (m.name == "package/emoji.json" or m.name.startswith("package/img/google/64/"))
        }
    if "package/emoji.json" not in members:
        raise DataError(f"{root}: no package/emoji.json inside. Expected {EMOJI_LAYOUT}")
    return json.loads(members["package/emoji.json"]), lambda name: members[f"package/img/google/64/{name}"]


def _emoji_png(read: Callable[[str], bytes], file: str) -> bytes:
    try:
        return read(file)
    except (KeyError, FileNotFoundError):
        raise DataError(
            f"emoji: image {file!r} listed in emoji.json is missing. Expected {EMOJI_LAYOUT}"
        ) from None


def load_emoji(cfg: dict) -> dict[str, SplitData]:
    """Noto emoji (Google's set, 64x64 RGBA) with their names as captions: a small text-to-image dataset.
    Every tenth emoji in sort order is held out as `test`; labels index the sorted categories."""
    meta, read = _emoji_files(Path(cfg["root"]))
    entries = emoji_entries(meta)
    categories = sorted({category for _, _, category in entries})
    splits = {}
    for split, keep in (("train", lambda i: i % 10 != 9), ("test", lambda i: i % 10 == 9)):
        chosen = [e for i, e in enumerate(entries) if keep(i)]
        images = np.stack(
            [emoji_on_white(_emoji_png(read, file), cfg["resolution"]) for file, _, _ in chosen]
        )
        labels = np.array([categories.index(c) for _, _, c in chosen], dtype=np.int64)
        splits[split] = SplitData([(images, labels)], captions=[[caption] for _, caption, _ in chosen])
    return splits
