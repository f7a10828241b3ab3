"""Schedule curves as pure functions of the step (pretraining and decoder training share them).

A function of the step, not a stateful scheduler: a resumed run at step s gets exactly the value an uninterrupted
run had at step s.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``), constant ``end`` afterwards."""
    if total <= 0:
        return end
    progress = min(1.0, max(0.0, step / total))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, peak: float, end: float, warmup: int, start: float = 0.0) -> float:
    """Linear warmup ``start`` → ``peak`` over ``warmup`` steps, then cosine ``peak`` → ``end`` until ``total``."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, end)


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear ``start`` → ``end`` over ``warmup`` steps, then constant (teacher temperature)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / warmup
