"""Dataset source adapters: each reads one dataset's download in its documented layout and returns its splits
(SplitData, chunks of images uint8 N x H x W x C at the target resolution and labels int64).

Adapters reproduce the authors' preprocessing: Fashion-MNIST (zero-padded to 32), scikit-learn digits,
CIFAR-10 (python batches, read without unpickling arbitrary objects), CelebA (128x128 crop at top 57, left 25,
resized to 64), ImageNet (ADM's center crop: box-halving, bicubic, center crop; labels from sorted synsets),
MS-COCO 2014 (center crop, Lanczos resize; every caption of each image), Noto emoji (captioned by name).
"""

from __future__ import annotations

from collections.abc import Callable

from uvit.shards import SplitData, in_memory
from uvit.sources.celeba import load_celeba
from uvit.sources.cifar10 import load_cifar10
from uvit.sources.digits import load_digits
from uvit.sources.emoji import load_emoji
from uvit.sources.fashion_mnist import load_fashion_mnist
from uvit.sources.imagenet import load_imagenet
from uvit.sources.mscoco import load_mscoco

# A dataset's `source` in params.yaml -> its adapter.
ADAPTERS: dict[str, Callable[[dict], dict[str, SplitData]]] = {
    "fashion_mnist": lambda cfg: in_memory(load_fashion_mnist(cfg)),
    "digits": lambda cfg: in_memory(load_digits(cfg)),
    "cifar10": lambda cfg: in_memory(load_cifar10(cfg)),
    "celeba": load_celeba,
    "imagenet": load_imagenet,
    "mscoco": load_mscoco,
    "emoji": load_emoji,
}
