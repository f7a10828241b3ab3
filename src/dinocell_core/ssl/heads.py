"""DINO / iBOT projection heads (official DINOv3 shape: MLP → L2-normalised bottleneck → prototypes).

DINOv3 uses two separate heads of the same shape, no weight norm on the last layer and no batch norm; the
public checkpoints carry no heads, so they always start from this random init (see the warm start in pretrain).
``normalize_prototypes`` restores DINOv1/v2's unit-norm prototypes (cosine logits): without it a student facing
near-uniform targets flattens its logits by shrinking the prototypes, the uniform fixed point small random-init
runs never leave (measured in docs/pretraining.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, normalize_prototypes: bool = False) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError("head nlayers must be >= 1")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(nlayers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.normalize_prototypes = normalize_prototypes
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck: what the prototypes score (and what the Sinkhorn queue keeps)."""
        x = self.mlp(x)
        return F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)

    def prototypes(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of bottleneck embeddings ``z`` against the current prototypes."""
        if self.normalize_prototypes:  # DINOv1/v2's weight-normed last layer with its norm fixed at 1
            return F.linear(z, F.normalize(self.last_layer.weight, dim=-1))
        return self.last_layer(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.embed(x))
