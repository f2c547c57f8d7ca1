"""Numeric precision that follows the hardware: `precision: auto` runs what the device computes natively.

auto is bf16 on CUDA GPUs with bf16 (Ampere and newer) and on CPUs with bf16 instructions (x86 AVX512-BF16 or
AMX, Arm BF16); fp16 with a gradient scaler on older CUDA GPUs; fp32 elsewhere. A CPU without bf16 instructions
emulates bf16 matmuls ~25x slower than fp32 (measured on an AVX2-only AMD EPYC), so an explicit bf16 there is
honoured but warned about, with the slowdown measured on the spot. Autocast reaches the network only: losses,
optimizer state and solver arithmetic stay in fp32.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of native bf16 arithmetic: x86 (AVX512-BF16, AMX-BF16), Arm (FEAT_BF16).
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags ('flags' on x86, 'Features' on Arm) from /proc/cpuinfo; empty where unreadable."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that stop below its bf16 kernels: with one set, bf16 is emulated even on
# a CPU that has the instructions (how an AVX2-only machine is reproduced on a newer one: docs/testing.md).
ONEDNN_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_CAPS_WITHOUT_BF16:
        return False
    flags = cpu_flags()
    if not flags and platform.system() == "Darwin":
        return False  # no /proc/cpuinfo; fp32 is the safe choice
    return bool(flags & NATIVE_BF16_FLAGS)


def resolve_precision(
    requested: str,
    device: torch.device | str,
    cuda_bf16: bool | None = None,
    cpu_bf16: bool | None = None,
) -> str:
    """The precision to run for `requested` on `device` (auto, or bf16 on a GPU without bf16, decided here)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda":
        if requested not in ("auto", "bf16"):
            return requested
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp16"  # pre-Ampere: fp16, with the gradient scaler in training
    if requested != "auto":
        return requested
    if cpu_bf16 is None:
        cpu_bf16 = cpu_has_native_bf16()
    return "bf16" if cpu_bf16 and device.type == "cpu" else "fp32"


def autocast(precision: str, device: torch.device | str):
    """Autocast of the network for a resolved precision (a no-op context for fp32)."""
    device = torch.device(device)
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def bf16_slowdown(size: int = 384, repeats: int = 3) -> float:
    """How many times slower a bf16 matmul runs than an fp32 one on this CPU (>1: emulated)."""

    def seconds(dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        torch.mm(a, a)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, a)
        return time.perf_counter() - start

    return seconds(torch.bfloat16) / seconds(torch.float32)


def choose(requested: str, device: torch.device | str, key: str, log=print) -> str:
    """resolve_precision, logging what auto chose and warning when an explicit bf16 is emulated."""
    device = torch.device(device)
    precision = resolve_precision(requested, device)
    if requested == "auto":
        log(f"{key}: auto -> {precision} on {describe_device(device)}")
    elif requested != precision:
        log(
            f"{key}: {requested} -> {precision}: {device} has no bf16 (fp16 with a gradient scaler in training)"
        )
    elif precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log(
            f"warning: {key}: bf16 on a CPU without bf16 instructions is emulated, {bf16_slowdown():.0f}x slower "
            f"than fp32 here (measured matmul); set {key}: auto (or fp32)"
        )
    return precision


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    native = "with" if cpu_has_native_bf16() else "without"
    return f"CPU {native} native bf16"
