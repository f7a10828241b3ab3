"""One rule for turning a ``device`` setting into a torch device, for training, inference and the plugin."""

from __future__ import annotations

import torch

from dinocell_core.config import ConfigError


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
