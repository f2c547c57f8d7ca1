"""Torch weight files: written atomically, read weights-only, and checked against the model they are for.

Training writes its checkpoints and weights here; sampling, `uvit import` and the classifier read theirs. A file
that cannot be used raises CheckpointError with a message that names it and why (missing, truncated, not a torch
file, refused by the weights-only loader, or keys and shapes that do not fit the model).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from uvit.errors import UserError
from uvit.fileio import atomic_write_bytes


class CheckpointError(UserError):
    """A weights or checkpoint file that cannot be used; the message names it and why."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a killed run leaves either the old file set or the new one, never a partial checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_torch_file(path: Path, expected: str, mmap: bool = False) -> object:
    """A torch file loaded weights-only (`mmap`: its tensors memory-mapped, read only where used); CheckpointError
    says why it cannot be (missing, truncated, not a torch file, or carrying Python objects the weights-only loader
    refuses)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as err:
        reason = err.strerror or str(err)
    except Exception as err:  # torch raises several types for truncated, foreign or refused files
        text = str(err)
        if "Weights only load failed" in text and "global" in text.lower():
            reason = "refused by the weights-only loader (it carries Python objects, not only tensors)"
        elif "zip archive" in text or "central directory" in text or isinstance(err, EOFError) or empty(path):
            reason = "truncated or damaged"
        else:
            reason = "not a torch file"
    raise CheckpointError(f"{path}: {reason}; expected {expected}")


def empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == 0  # torch.load(mmap=True) does not raise EOFError for it


def check_state_dict(path: Path, state: object, model: torch.nn.Module, experiment: str) -> None:
    """Raise CheckpointError naming the first key of `state` that does not fit `model` (missing, extra or shape)."""
    fix = f"give the EMA weights (nnet_ema.pth) of {experiment}'s model, or fix its model settings in params.yaml"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors; {fix}")
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"{path}: no {key!r}, which the model of {experiment} has; {fix}")
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {list(state[key].shape)}, the model of {experiment} expects "
                f"{list(value.shape)}; {fix}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise CheckpointError(f"{path}: {extra[0]!r} is not in the model of {experiment}; {fix}")
