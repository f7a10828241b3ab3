"""One rule for turning a ``device`` setting into a torch device, for training, inference and the plugin, and one
for the ``precision`` inference computes in (segmentation, profile embedding, the plugin)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from dinocell_core.config import PRECISIONS, ConfigError


def resolve_device(name: str, key: str = "device", local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU if CUDA is available, else CPU; ``cpu``; ``cuda`` / ``cuda:N``.

    An explicit ``cuda`` without a GPU is an error naming ``key``, never a silent CPU run. Under torchrun a bare
    ``cuda`` (or ``auto``) means the rank's own GPU (``local_rank``)."""
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {name!r} but no CUDA device is available (use auto or cpu)")
        return torch.device("cuda", local_rank if text == "cuda" else int(text.split(":", 1)[1]))
    raise ConfigError(f"{key} must be auto, cpu or cuda[:N], got {name!r}")


def bf16_capable(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU of compute capability ≥ 8.0 (Ampere on; older ones
    only emulate it, slower than fp32), or any CPU (torch's CPU autocast runs bf16 everywhere — fast only with
    AVX512-BF16/AMX, which is why ``auto`` keeps CPUs on fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu"


def enable_tf32() -> None:
    """Let the fp32 matmuls left outside bf16 autocast use TF32 tensor cores (process-wide; cuDNN convolutions
    already do by default): fp32 without TF32 runs at 1/8–1/16 of a modern GPU's bf16 throughput."""
    torch.set_float32_matmul_precision("high")


@dataclass(frozen=True)
class InferencePrecision:
    """How a network's forward pass computes on ``device``: under bf16 autocast (``dtype``) or in fp32 (None)."""

    device: torch.device
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> AbstractContextManager[object]:
        """Autocast for the forward pass; callers take ``.float()`` of its outputs, so what follows (blending,
        watershed, profile tables) stays fp32 whatever the precision."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A host tensor onto the device; on CUDA through pinned memory and asynchronously, so the copy of one
        batch overlaps the queue of kernels still running."""
        if self.device.type != "cuda":
            return x.to(self.device)
        return x.pin_memory().to(self.device, non_blocking=True)


def resolve_precision(name: str, device: torch.device, key: str = "precision") -> InferencePrecision:
    """``auto`` → bf16 autocast on a bf16-capable CUDA GPU, else fp32; ``fp32``; ``bf16`` (also on a CPU, where it
    is slower than fp32 but computes what a GPU does). ``bf16`` where the device cannot is an error naming ``key``,
    never a silent fp32 run. On CUDA, TF32 is enabled for whatever stays fp32 (:func:`enable_tf32`)."""
    text = str(name).strip().lower()
    if text not in PRECISIONS:
        raise ConfigError(f"{key} must be {', '.join(PRECISIONS)}, got {name!r}")
    if device.type == "cuda":
        enable_tf32()
    if text == "auto":
        text = "bf16" if device.type == "cuda" and bf16_capable(device) else "fp32"
    elif text == "bf16" and not bf16_capable(device):
        raise ConfigError(f"{key} is 'bf16' but {device} has no native bfloat16 (a CUDA GPU needs compute "
                          "capability ≥ 8.0); use auto or fp32")
    return InferencePrecision(device, torch.bfloat16 if text == "bf16" else None)
