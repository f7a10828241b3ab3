"""A small strict config model for the config and run-directory tests."""

from __future__ import annotations

from dinocell_core.config import StrictModel


class Optim(StrictModel):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


class Model(StrictModel):
    weights: str | None = None
    patch_size: int = 8


class Job(StrictModel):
    model: Model = Model()
    optim: Optim = Optim()
    name: str = "job"
