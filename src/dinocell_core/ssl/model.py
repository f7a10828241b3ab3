"""Student/teacher networks and the combined DINOv3 objective (DINO CLS + iBOT masked patches + KoLeo).

The student sees masked global crops and the local crops; the teacher (an EMA of the student, eval mode, no
gradients) sees the clean global crops. Teacher outputs are centred with Sinkhorn-Knopp. The total follows the
official combination::

    w_dino·(n_l·L_local + n_g·L_global)/(n_l + n_g) + w_koleo·Σ_globals KoLeo + w_ibot·L_ibot

with n_l = globals×locals and n_g = globals×(globals−1) cross-crop terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dinocell_core.backbones.vit import DinoBackbone, parameters_as
from dinocell_core.ssl.heads import DINOHead
from dinocell_core.ssl.losses import (
    TeacherQueue,
    dino_loss,
    entropy,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
)


class SSLNetwork(nn.Module):
    """Backbone + separate DINO and iBOT heads. ``forward`` is the student pass (one call, so DDP can hook it).

    ``compute_dtype`` (bf16 on CUDA): every pass runs on copies of the parameters in that dtype, cast once per pass
    from the fp32 parameters the optimizer and the EMA keep — the official trainer's FSDP2 mixed precision
    (``param_dtype`` bf16, fp32 gradients) on one device. Unlike autocast, the residual stream, LayerScale, norms and
    heads then stay bf16 (autocast keeps the stream fp32 and re-casts it before every matmul); losses and
    Sinkhorn-Knopp take the logits to fp32."""

    def __init__(self, backbone: DinoBackbone, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int,
                 ibot_out_dim: int | None = None, normalize_prototypes: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        d = backbone.embed_dim
        self.dino_head = DINOHead(d, out_dim, hidden_dim, bottleneck_dim, nlayers, normalize_prototypes)
        self.ibot_head = DINOHead(d, ibot_out_dim or out_dim, hidden_dim, bottleneck_dim, nlayers, normalize_prototypes)
        self.compute_dtype: torch.dtype | None = None

    def heads(self) -> dict[str, nn.Module]:
        return {"dino_head": self.dino_head, "ibot_head": self.ibot_head}

    def _compute_params(self) -> dict[str, torch.Tensor] | None:
        """This pass's parameter copies in ``compute_dtype`` (differentiable casts), or None for fp32; with them the
        attention's fixed zero K bias (a buffer timm concatenates with the q and v biases)."""
        if self.compute_dtype is None:
            return None
        params = {n: p.to(self.compute_dtype) for n, p in self.named_parameters()}
        params.update({n: b.to(self.compute_dtype) for n, b in self.named_buffers() if n.endswith("attn.k_bias")})
        return params

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.compute_dtype is None else x.to(self.compute_dtype)

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor,
                mask_indices: torch.Tensor | None = None, backbone_grad: bool = True) -> dict[str, torch.Tensor]:
        """``global_crops`` [G·B, 3, H, W] (ImageNet-standardised), ``masks`` [G·B, N] bool (iBOT),
        ``mask_indices`` the masked positions of ``masks.flatten()`` (from the loader; computing them here costs a
        host sync on a GPU)."""
        if mask_indices is None:
            mask_indices = masks.flatten().nonzero().squeeze(1)
        with parameters_as(self, self._compute_params()):
            with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
                g = self.backbone(self._input(global_crops), masks=masks)
                cls = [g["cls"]]
                if local_crops is not None and local_crops.shape[0]:
                    cls.append(self.backbone(self._input(local_crops))["cls"])
                cls_all = torch.cat(cls)
                masked_patches = g["patches"].flatten(0, 1).index_select(0, mask_indices)
            return {"cls_global": g["cls"], "dino_logits": self.dino_head(cls_all),
                    "ibot_logits": self.ibot_head(masked_patches)}

    @torch.no_grad()
    def teacher_forward(self, global_crops: torch.Tensor, masks: torch.Tensor,
                        mask_indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher outputs; ``dino_embed`` (the DINO head's bottleneck) is what the Sinkhorn queue keeps."""
        if mask_indices is None:
            mask_indices = masks.flatten().nonzero().squeeze(1)
        with parameters_as(self, self._compute_params()):
            g = self.backbone(self._input(global_crops))
            z = self.dino_head.embed(g["cls"])
            patches = g["patches"].flatten(0, 1).index_select(0, mask_indices)
            return {"cls_global": g["cls"], "dino_embed": z, "dino_logits": self.dino_head.prototypes(z),
                    "ibot_logits": self.ibot_head(patches)}


def set_drop_path(backbone: DinoBackbone, rate: float, profile: str) -> list[float]:
    """Stochastic depth per block: ``uniform`` (the official DINOv3 ViT: one rate for every block) or ``linear``
    (timm's 0 → rate ramp, half the average). Returns the per-block rates. The backbone applies each rate in the
    official form (the branch runs on a random subset of the samples, ``backbones.vit._subset_block``)."""
    from timm.layers import DropPath

    n = backbone.num_blocks
    if profile == "uniform":
        rates = [rate] * n
    elif profile == "linear":
        rates = [rate * i / max(1, n - 1) for i in range(n)]
    else:
        raise ValueError(f"unknown drop-path profile {profile!r}; expected uniform or linear")
    for blk, r in zip(backbone.vit.blocks, rates):
        blk.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        blk.drop_path2 = DropPath(r) if r > 0 else nn.Identity()
    return rates


@dataclass(frozen=True)
class LossWeights:
    dino: float = 1.0
    ibot: float = 1.0
    koleo: float = 0.1
    student_temp: float = 0.1
    sinkhorn_iterations: int = 3


def ssl_losses(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], masks: torch.Tensor,
               n_global: int, n_local: int, teacher_temp: float, w: LossWeights,
               groups: torch.Tensor | None = None, queue: TeacherQueue | None = None,
               mask_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and a dict of every term and collapse signal (all fp32 tensors: no host sync here when
    ``mask_weights`` comes from the loader).

    ``groups`` (int [B]): the field of each sample, so KoLeo never pairs two crops of one field. ``queue``: the
    DINO targets are normalised over the batch and the queue's recent teacher embeddings, scored with the current
    prototypes (``loss.sinkhorn_queue``). ``mask_weights``: :func:`~dinocell_core.ssl.losses.masked_patch_weights`
    of ``masks``."""
    b = masks.shape[0] // n_global
    t_dino = teacher["dino_logits"].float()
    k = t_dino.shape[-1]
    normalise = queue.targets if queue is not None else sinkhorn_knopp
    t_probs = normalise(t_dino, teacher_temp, w.sinkhorn_iterations).view(n_global, b, k)
    s_dino = student["dino_logits"].float()
    s_global = s_dino[: n_global * b].view(n_global, b, k)
    zero = s_dino.new_zeros(())
    n_l_terms, n_g_terms = n_global * n_local, n_global * (n_global - 1)
    local = dino_loss(s_dino[n_global * b :].view(n_local, b, k), t_probs, w.student_temp) if n_local else zero
    glob = dino_loss(s_global, t_probs, w.student_temp, ignore_diagonal=True) if n_global > 1 else zero
    dino = (n_l_terms * local + n_g_terms * glob) / max(1, n_l_terms + n_g_terms)

    t_ibot = sinkhorn_knopp(teacher["ibot_logits"], teacher_temp, w.sinkhorn_iterations)
    ibot = ibot_loss(student["ibot_logits"], t_ibot, masks, w.student_temp, mask_weights)

    cls = student["cls_global"].float().view(n_global, b, -1)
    koleo = sum(koleo_loss(cls[i], groups) for i in range(n_global)) if w.koleo > 0 else zero

    total = w.dino * dino + w.ibot * ibot + w.koleo * koleo
    with torch.no_grad():
        terms = {
            "loss_total": total.detach(),
            "loss_dino": dino.detach(), "loss_dino_local": local.detach(), "loss_dino_global": glob.detach(),
            "loss_ibot": ibot.detach(), "loss_koleo": torch.as_tensor(koleo, device=total.device).detach(),
            "teacher_entropy": entropy(t_probs.view(-1, k)),
            "teacher_batch_entropy": entropy(t_probs.view(-1, k).mean(0, keepdim=True)),
            # share of samples whose two global views get the same top prototype: 0 = the targets are noise
            "teacher_view_agreement": ((t_probs[0].argmax(-1) == t_probs[1].argmax(-1)).float().mean()
                                       if n_global > 1 else zero),
            "student_cls_std": F.normalize(cls.reshape(-1, cls.shape[-1]), dim=-1).std(0).mean(),
            "teacher_cls_std": F.normalize(teacher["cls_global"].float(), dim=-1).std(0).mean(),
        }
    return total, terms
