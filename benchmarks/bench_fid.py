"""Benchmark: clean-fid's own "clean"-mode feature path vs uvit.fid (fp32, bf16) on CPU.

Usage:
    python benchmarks/bench_fid.py --num 2000 --data /usr/share/datasets/fashion-mnist \
        --threads 2 --json out.json

Fashion-MNIST test images are padded to 32x32 and written as PNGs to a temporary
folder; every path reads that folder.  clean-fid runs ``get_folder_features``
with the offline TorchScript Inception as custom model (``num_workers=0``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uvit import fid


def load_fashion_mnist(data_dir: Path, num: int) -> np.ndarray:
    """First ``num`` test images, zero-padded 2 px each side to uint8 N x 32 x 32."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
    images = raw.reshape(-1, 28, 28)[:num]
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def write_pngs(images: np.ndarray, folder: Path) -> None:
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:06d}.png")


def run_cleanfid(folder: Path, batch_size: int) -> np.ndarray:
    from cleanfid.fid import get_folder_features

    return get_folder_features(
        str(folder),
        model=fid.cleanfid_feature_fn(),
        num_workers=0,
        batch_size=batch_size,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )


def run_ours(folder: Path, precision: str, batch_size: int) -> np.ndarray:
    extractor = fid.InceptionFeatureExtractor(precision=precision, batch_size=batch_size)
    return extractor.features(fid.read_image_folder(folder), progress=True, desc=f"ours {precision}")


def fid_vs_first_half(feats: np.ndarray, ref_feats: np.ndarray) -> float:
    """FID of the second half of ``feats`` against the first half of ``ref_feats``."""
    half = len(feats) // 2
    mu_r, sig_r = fid.feature_statistics(ref_feats[:half])
    mu, sig = fid.feature_statistics(feats[half:])
    return fid.frechet_distance(mu, sig, mu_r, sig_r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-size", type=int, default=32, help="ours; clean-fid uses its default 128")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="interleaved rounds; the best time per path is kept (shared machines)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = load_fashion_mnist(args.data, args.num)
    paths = [
        ("clean-fid", lambda d: run_cleanfid(d, 128)),
        ("ours fp32", lambda d: run_ours(d, "fp32", args.batch_size)),
    ]
    if not args.skip_bf16:
        paths.append(("ours bf16", lambda d: run_ours(d, "bf16", args.batch_size)))

    best: dict[str, float] = {}
    feats: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_pngs(images, folder)
        for _ in range(args.repeat):
            for name, fn in paths:
                start = time.perf_counter()
                feats[name] = fn(folder)  # includes reading the PNGs and model set-up
                best[name] = min(best.get(name, np.inf), time.perf_counter() - start)
    results = [
        {"path": name, "images": len(images), "seconds": best[name], "images_per_s": len(images) / best[name]}
        for name, _ in paths
    ]

    ref = feats["clean-fid"]
    fid_ref = fid_vs_first_half(ref, ref)
    for row in results:
        f = feats[row["path"]]
        row["speedup"] = results[0]["seconds"] / row["seconds"]
        row["max_rel_feature_diff"] = float(np.abs(f - ref).max() / np.abs(ref).max())
        row["fid"] = fid_vs_first_half(f, ref)
        row["fid_diff"] = row["fid"] - fid_ref

    header = f"{'path':16s} {'images':>6s} {'seconds':>8s} {'img/s':>7s} {'speed-up':>8s} {'max rel diff':>12s} {'FID diff':>10s}"
    print(header)
    for r in results:
        print(
            f"{r['path']:16s} {r['images']:6d} {r['seconds']:8.1f} {r['images_per_s']:7.2f} "
            f"{r['speedup']:7.2f}x {r['max_rel_feature_diff']:12.2e} {r['fid_diff']:10.2e}"
        )
    print(f"clean-fid FID (second half vs first half): {fid_ref:.4f}; threads={args.threads}")

    if args.json is not None:
        meta = {
            "threads": args.threads,
            "num": args.num,
            "batch_size": args.batch_size,
            "torch": torch.__version__,
            "repeat": args.repeat,
            "fid_clean_fid": fid_ref,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
