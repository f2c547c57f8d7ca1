"""What an experiment's U-ViT is conditioned on, for training and sampling alike (`condition` in params.yaml).

- `none`: nothing;
- `class`: the image's class label. A class model trained for classifier-free guidance (training.cond_drop_prob
  > 0) has one more class-embedding row than the data has classes: the null class, index K = the number of real
  classes (the authors' ImageNet models: 1000 + 1 = 1001 rows). Sample i is drawn for class i mod K;
- `text`: one of the image's encoded captions (uvit.text), drawn uniformly in training; the null condition is the
  encoding of the empty caption. Sample i is drawn for caption i mod N of the captions given.

Training replaces each condition by the null one at cond_drop_prob (uvit.diffusion.drop_condition); sampling with
guidance predicts the noise under both (uvit.diffusion.guided_noise_predictor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from uvit.diffusion import drop_condition, null_mask
from uvit.errors import UserError
from uvit.text import Contexts


def null_rows(exp: dict) -> int:
    """Class-embedding rows besides the real classes: 1 (the null class) for a class model trained for guidance."""
    return 1 if exp["derived"]["null_class"] else 0


def label_rows(exp: dict, classes: int) -> int:
    """Rows of the U-ViT's class embedding for data of `classes` classes; 0 (no class token) unless a class model."""
    return classes + null_rows(exp) if exp["condition"] == "class" else 0


def classes_of_rows(exp: dict, rows: int) -> int:
    """The real classes of a class embedding of `rows` rows (the inverse of label_rows, for released weights)."""
    return rows - null_rows(exp)


def sample_classes(indices: list[int], classes: int) -> torch.Tensor:
    """The class each sample of a class model is drawn for: index mod classes (balanced classes)."""
    return torch.tensor([i % classes for i in indices], dtype=torch.long)


def class_grid_order(classes: int, per_class: int) -> list[int]:
    """The first `per_class` samples of each class, class by class: the sample indices of a grid with one row per
    class (sample i is drawn for class i mod classes)."""
    drawn = sample_classes(list(range(classes * per_class)), classes).tolist()
    return sorted(range(len(drawn)), key=drawn.__getitem__)  # stable: each class's samples in index order


def sample_captions(captions: list[list[str]], count: int) -> list[str]:
    """The caption each of `count` samples is drawn for: caption i mod N of a split's captions, image by image
    (the order of Contexts.cycled)."""
    flat = [caption for image_captions in captions for caption in image_captions]
    return [flat[i % len(flat)] for i in range(count)]


class Conditions:
    """The conditions of an experiment with `classes` classes: per training batch (with its null values dropped in at
    `cond_drop_prob`) or per sample index; a text experiment reads its encoded captions from `text_dir`."""

    def __init__(
        self,
        exp: dict,
        classes: int,
        text_dir: Path | None = None,
        verify: bool = True,
        purpose: str = "trains on",
    ):
        self.kind, self.drop, self.classes = exp["condition"], exp["training"]["cond_drop_prob"], classes
        self.contexts = None
        if self.kind == "text":
            if text_dir is None:
                raise UserError(f"{exp['name']}: a text experiment {purpose} encoded captions; give --text")
            self.contexts = Contexts(text_dir, verify)
        # The null condition of classifier-free guidance, None where there is none.
        self.null = classes if null_rows(exp) else None
        if self.contexts is not None:
            self.null = self.contexts.null

    @property
    def context_shape(self) -> tuple[int, int] | None:
        """(tokens, width) of a text experiment's contexts; None for other experiments."""
        return self.contexts.shape if self.contexts is not None else None

    def draw(
        self, index: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> torch.Tensor | None:
        """Rows `rows` of the training conditions of the batch of images `index` (with their labels, the whole
        batch's); each is the null condition at rate cond_drop_prob."""
        if self.kind == "none":
            return None
        cond = labels[rows] if self.kind == "class" else self.contexts.of_images(index, generator, rows)
        if self.drop > 0:
            mask = null_mask(len(index), self.drop, generator)[rows]
            cond = drop_condition(cond, self.null, self.drop, mask=mask)
        return cond

    def of_samples(self, indices: list[int]) -> torch.Tensor | None:
        """The conditions samples `indices` are drawn for: class i mod classes, or caption i mod N."""
        if self.kind == "class":
            return sample_classes(indices, self.classes)
        if self.kind == "text":
            return self.contexts.cycled(indices)
        return None
