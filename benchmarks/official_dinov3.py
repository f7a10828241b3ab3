"""The official DINOv3 trainer's step, built from a local checkout of facebookresearch/dinov3, for side-by-side
counts and timings with this project's step (``benchmarks/ssl_step.py --official PATH``).

The checkout's code is imported from PATH, never copied here (DINOv3 License). Its ``SSLMetaArch`` (student,
EMA teacher, heads, DINO/iBOT/KoLeo losses, both Sinkhorn-Knopp centerings) runs as is; one iteration is the body
of its ``train.do_train`` loop: ``apply_optim_scheduler``, ``zero_grad``, ``forward_backward``, per-module
``clip_grad_norm_`` with its ``.item()``, the NaN check of the loss, the fused AdamW of ``build_optimizer`` (its
``multi_tensor_optim`` param groups) and ``update_ema``. What its CUDA + FSDP2 setup does on a GPU is reproduced
from outside, each for a stated reason:

- FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: the student and teacher compute on bf16
  copies of their fp32 parameters (cast once per step, gradients back to fp32), and its collate casts the crops to
  bf16 — one GPU, so no sharding and no collective traffic;
- ``.cuda(non_blocking=True)`` on the batch: moved to the benchmark's device instead;
- a 1-rank gloo process group (its iBOT Sinkhorn all-reduces unconditionally); on meta tensors ``all_reduce`` is
  the identity it is for one rank (gloo cannot reduce meta tensors);
- ``train.compile``: its own ``compile_transformer`` / ``wrap_compile_block`` when asked; its iBOT Sinkhorn module
  compiles itself in its constructor, so with compile off dynamo is disabled for both trainers.

The same crops, masks and per-step values feed both trainers (:func:`official_batch`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from dinocell_core.ssl.model import parameters_as

MISSING = ("the official trainer needs a checkout of facebookresearch/dinov3 (give its folder with --official) and "
           "omegaconf (pip install omegaconf)")


class OfficialUnavailable(RuntimeError):
    pass


def import_official(path: str | os.PathLike[str]) -> Any:
    """The checkout's ``dinov3`` package (its folder holds ``dinov3/train/ssl_meta_arch.py``)."""
    root = Path(path).expanduser().resolve()
    if not (root / "dinov3" / "train" / "ssl_meta_arch.py").is_file():
        raise OfficialUnavailable(f"{root} is not a dinov3 checkout (no dinov3/train/ssl_meta_arch.py); {MISSING}")
    sys.path.insert(0, str(root))
    try:
        import dinov3.train.train as train  # noqa: F401  (build_optimizer, schedulers, apply_optim_scheduler)
        from dinov3.train.ssl_meta_arch import SSLMetaArch  # noqa: F401
    except ImportError as exc:
        raise OfficialUnavailable(f"cannot import dinov3 from {root}: {exc}; {MISSING}") from exc
    import dinov3

    return dinov3


def official_config(cfg: Any, batch: int, compile_: bool) -> Any:
    """The official default config with this project's recipe shapes: ViT-S/p8 with 4 registers, masked K bias,
    LayerNorm eps 1e-5, RoPE with rescale, the recipe's heads, crops, masking, KoLeo and clip (its RoPE runs in
    its training default dtype, bf16)."""
    from dinov3.configs import get_default_config
    from omegaconf import OmegaConf

    m, h, d, lc, o = cfg.model, cfg.heads, cfg.data, cfg.loss, cfg.optim
    over = {
        "student": {"arch": m.arch, "patch_size": m.patch_size, "drop_path_rate": m.drop_path_rate,
                    "layerscale": m.layerscale_init, "n_storage_tokens": 4, "mask_k_bias": True,
                    "norm_layer": "layernormbf16", "pos_embed_rope_rescale_coords": m.rope_rescale_coords},
        "dino": {"head_n_prototypes": h.out_dim, "head_hidden_dim": h.hidden_dim,
                 "head_bottleneck_dim": h.bottleneck_dim, "head_nlayers": h.nlayers,
                 "koleo_loss_weight": lc.koleo_weight, "loss_weight": lc.dino_weight},
        "ibot": {"head_n_prototypes": h.ibot_out_dim, "head_hidden_dim": h.hidden_dim,
                 "head_bottleneck_dim": h.bottleneck_dim, "head_nlayers": h.nlayers,
                 "loss_weight": lc.ibot_weight, "mask_sample_probability": d.mask_probability,
                 "mask_ratio_min_max": list(d.mask_ratio)},
        "crops": {"global_crops_size": d.global_size, "local_crops_size": d.local_size,
                  "local_crops_number": d.n_local},
        "train": {"batch_size_per_gpu": batch, "compile": compile_, "checkpointing": False},
        "optim": {"clip_grad": o.clip_grad, "layerwise_decay": o.layer_decay,
                  "patch_embed_lr_mult": o.patch_embed_lr_mult},
        "compute_precision": {"param_dtype": "bf16" if cfg.train.precision in ("auto", "bf16") else "fp32"},
    }
    return OmegaConf.merge(get_default_config(), OmegaConf.create(over))


@contextlib.contextmanager
def single_rank(device: torch.device) -> Iterator[None]:
    """A 1-rank gloo group (the official iBOT Sinkhorn all-reduces unconditionally); ``.cuda()`` moves to
    ``device``; on meta tensors all_reduce is the identity of one rank."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    real = dist.all_reduce

    def all_reduce(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return None if t.device.type == "meta" else real(t, *args, **kwargs)

    def cuda(self: torch.Tensor, device_: Any = None, non_blocking: bool = False, **_: Any) -> torch.Tensor:
        return self.to(device, non_blocking=non_blocking)

    try:
        with mock.patch.object(dist, "all_reduce", all_reduce), mock.patch.object(torch.Tensor, "cuda", cuda):
            yield
    finally:
        if created:
            dist.destroy_process_group()


class OfficialStep:
    """The official model, optimizer and schedules; :meth:`step` is one iteration of its training loop."""

    def __init__(self, cfg: Any, batch: int, device: torch.device, compile_: bool = False) -> None:
        from dinov3.train.ssl_meta_arch import SSLMetaArch
        from dinov3.train.train import build_optimizer, build_schedulers

        self.cfg = official_config(cfg, batch, compile_)
        self.device = device
        with torch.device("meta"):
            self.model = SSLMetaArch(self.cfg)
        if compile_:
            from dinov3.fsdp.ac_compile_parallelize import compile_transformer, wrap_compile_block

            for net in (self.model.student, self.model.teacher):
                for k in net.keys():
                    if k == "backbone":
                        compile_transformer(self.cfg, net[k])
                    else:
                        net[k] = wrap_compile_block(net[k], use_cuda_graphs=False, is_backbone_block=False)
        if device.type != "meta":
            self.model.to_empty(device=device)
            torch.manual_seed(0)
            self.model.init_weights()
        self.model.train()
        self.optimizer = build_optimizer(self.cfg, self.model.get_params_groups())
        self.schedules = build_schedulers(self.cfg)
        self.param_dtype = torch.bfloat16 if self.cfg.compute_precision.param_dtype == "bf16" else None
        self.input_dtype = self.param_dtype or torch.float32

    def tensors(self) -> list[torch.Tensor]:
        """Everything alive between steps on the device (for the live-memory count)."""
        return [*self.model.parameters(), *self.model.buffers()]

    def _copies(self, net: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        if self.param_dtype is None:
            return None
        return {n: p.to(self.param_dtype) for n, p in net.named_parameters()}

    def step(self, data: dict[str, Any], iteration: int) -> torch.Tensor:
        from dinov3.train.train import apply_optim_scheduler

        lr, wd, mom, teacher_temp, last_layer_lr = (s[iteration] for s in self.schedules)
        apply_optim_scheduler(self.optimizer, lr, wd, last_layer_lr)
        self.optimizer.zero_grad(set_to_none=True)
        model = self.model
        with parameters_as(model.student, self._copies(model.student)), \
                parameters_as(model.teacher, self._copies(model.teacher)):
            total, _ = model.forward_backward(data, teacher_temp=teacher_temp, iteration=iteration)
        for v in model.student.values():
            torch.nn.utils.clip_grad_norm_(v.parameters(), max_norm=self.cfg.optim.clip_grad).item()
        bool(total.detach().isnan().any())  # its NaN check (after an all_gather of the loss across ranks)
        self.optimizer.step()
        model.update_ema(mom)
        return total.detach()


def official_batch(inputs: Any, batch_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """The official collate's keys from this project's prepared step inputs (same standardised crops, masks, mask
    indices and weights); crops in the official compute ``dtype``, as its collate casts them."""
    n_masked = int(inputs.mask_indices.shape[0])
    return {
        "collated_global_crops": inputs.global_crops.to(dtype),
        "collated_local_crops": inputs.local_crops.to(dtype),
        "collated_masks": inputs.masks,
        "mask_indices_list": inputs.mask_indices,
        "masks_weight": inputs.mask_weights,
        "n_masked_patches": torch.full((1,), n_masked, dtype=torch.long, device=inputs.masks.device),
        "upperbound": n_masked,
        "global_batch_size": batch_size,
    }
