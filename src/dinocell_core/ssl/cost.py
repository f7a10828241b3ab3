"""What one SSL training step costs, counted per op: FLOPs, bytes moved, host–device syncs and the peak of live
device memory — and what that means on a named GPU (``pretrain CONFIG --plan``, ``--gpu``).

Why counted and on meta tensors: the trainer's own step runs unchanged with shapes only (no data, no arithmetic), so
the A100 recipe counts in seconds on any machine, and every op the step really issues is in the count (a hand
formula misses the casts, copies and optimizer passes). Per op (a :class:`~torch.utils._python_dispatch.
TorchDispatchMode`):

- FLOPs: torch's own formulas (``torch.utils.flop_counter``); attention is routed to the fused kernel a GPU runs
  (flash for bf16, memory-efficient for fp32) instead of the math fallback meta tensors would take;
- bytes: the tensors each op reads plus those it writes (views move nothing; a broadcast input counts its storage
  once). Compiled code fuses ops, so on a GPU with ``train.compile`` this is an upper bound;
- syncs: ops that make a GPU wait for the host or the host for the GPU — scalar reads (``.item()``, ``bool()``,
  ``.tolist()``), ops whose output shape depends on data (boolean indexing, ``nonzero``), blocking copies between
  host and device. On meta tensors a scalar read returns 0 (the step then takes its "finite, no stop" path);
- peak memory: the bytes of device storages alive, followed op by op (every storage is tracked from the op that
  made it until it is freed), including parameters, gradients, AdamW state and the saved activations.

The modelled step time on a GPU is the roofline sum FLOPs / peak + bytes / bandwidth: kernels rarely overlap
compute with memory traffic in a ViT-S step, and the same model applied to the official trainer gives its ratio.
"""

from __future__ import annotations

import json
import math
import sys
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

# ------------------------------------------------------------------------------------------------------ GPUs


@dataclass(frozen=True)
class GPU:
    """Dense peak throughput (bf16 tensor cores; fp32 without TF32), memory bandwidth and memory of one card."""

    name: str
    bf16_flops: float
    fp32_flops: float
    bandwidth: float  # bytes/s
    memory: float  # bytes


GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("A100-40", 312e12, 19.5e12, 1.555e12, 40 * 2**30),
    GPU("A100-80", 312e12, 19.5e12, 2.039e12, 80 * 2**30),
    GPU("H100", 989e12, 67e12, 3.35e12, 80 * 2**30),  # SXM
)}
#: besides the counted tensors: the CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers (bytes) ...
RESERVED_BYTES = 1.5e9
#: ... and the caching allocator's block rounding and fragmentation on top of the counted peak
FRAGMENTATION = 1.10


def gpu_named(name: str) -> GPU:
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}") from None


def fits(peak_bytes: float, gpu: GPU) -> bool:
    return peak_bytes * FRAGMENTATION + RESERVED_BYTES <= gpu.memory


# ------------------------------------------------------------------------------------------------------ counting

#: ops that return a tensor without touching data (besides views, which the schema marks)
_NO_DATA = {aten.detach.default, aten.lift_fresh.default, aten.empty.memory_format, aten.empty_strided.default,
            aten.new_empty.default, aten.new_empty_strided.default, aten.empty_like.default,
            aten._unsafe_view.default, aten.alias.default, aten.set_.source_Storage_storage_offset}
#: ops whose output shape depends on the data: the host waits for the device to learn it
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
                   aten._unique2.default, aten.unique_dim.default, aten.masked_scatter.default,
                   aten.masked_scatter_.default}
_SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default}


class DataDependentOp(RuntimeError):
    """A step op whose output shape depends on tensor values: it cannot run on meta tensors (and syncs on a GPU)."""


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    """Bytes an op touches in ``t``: its elements, or its storage when it is a broadcast (stride-0) view."""
    n = t.numel() * t.element_size()
    try:
        return min(n, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return n


def _is_view(func: Any) -> bool:
    return bool(getattr(func, "is_view", False)) or func in _NO_DATA


def _written_args(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Tensors an op mutates in place (``x.mul_``, ``_foreach_add_``, fused AdamW's states)."""
    out: list[torch.Tensor] = []
    schema = getattr(func, "_schema", None)
    if schema is None:
        return out
    for i, a in enumerate(schema.arguments):
        if a.alias_info is None or not a.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(a.name)
        out.extend(_tensors(value))
    return out


def _sync_reason(func: Any, args: tuple, kwargs: dict, device: torch.device) -> str | None:
    if func in _SCALAR_READS:
        return "scalar read (.item / bool / int / float)"
    if func in _DATA_DEPENDENT:
        return f"data-dependent shape ({func})"
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        index = args[1] if len(args) > 1 else kwargs.get("indices")
        if any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(index)):
            return f"boolean-mask indexing ({func})"
    if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor) and kwargs.get(
            "output_size") is None:
        return "repeat_interleave without output_size"
    if device.type != "cpu" and func in (aten._to_copy.default, aten.copy_.default):
        src = args[1] if func is aten.copy_.default else args[0]
        dst_device = args[0].device if func is aten.copy_.default else kwargs.get("device", src.device)
        devices = {torch.device(src.device).type, torch.device(dst_device).type}
        if devices == {"cpu", device.type} and not kwargs.get("non_blocking", args[2] if (
                func is aten.copy_.default and len(args) > 2) else False):
            return "blocking copy between host and device"
    return None


def _placeholder(func: Any, args: tuple, kwargs: dict) -> Any:
    """What a host read of a meta tensor returns while counting: zeros (a finite step that is not stopped)."""
    if func in _SCALAR_READS:
        return False if args[0].dtype == torch.bool else 0
    src = args[0]
    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype, device="cpu")


class _FusedAttention(TorchFunctionMode):
    """Routes ``scaled_dot_product_attention`` to the fused kernel a GPU runs (flash for bf16/fp16, memory-
    efficient for fp32): on meta tensors torch would take the math path and count the N×N attention matrix."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        if kwargs.get("attn_mask") is not None or q.device.type != "meta":
            return func(*args, **kwargs)
        p, causal, scale = kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False), kwargs.get("scale")
        if q.dtype in (torch.bfloat16, torch.float16):
            return aten._scaled_dot_product_flash_attention(q, k, v, p, causal, False, scale=scale)[0]
        return aten._scaled_dot_product_efficient_attention(q, k, v, None, True, p, causal, scale=scale)[0]


class OpCounter(TorchDispatchMode):
    """FLOPs, bytes, syncs and live device memory of everything that runs inside it (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.flops = 0.0
        self.bytes = 0.0
        self.bytes_by_op: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, int] = {}

    def reset(self) -> None:
        """Zero the counts and restart the peak from what is alive now (memory tracking goes on)."""
        self.flops = self.bytes = 0.0
        self.bytes_by_op.clear()
        self.syncs.clear()
        self.peak = self.live

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that existed before the mode (parameters, optimizer state, the batch) as live."""
        for t in tensors:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device.type:
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._storages:
            return
        self._storages[key] = storage.nbytes()
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._storages.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs, self.device)
        if reason is not None:
            self.syncs[reason] += 1
            if self.device.type == "meta":
                if func in _DATA_DEPENDENT or reason.startswith("boolean"):
                    raise DataDependentOp(f"{func} in the training step: {reason}")
                if func in _SCALAR_READS or (func is aten._to_copy.default and kwargs.get("device") is not None
                                             and torch.device(kwargs["device"]).type == "cpu"):
                    return _placeholder(func, args, kwargs)
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.flops += flop_registry[packet](*args, **kwargs, out_val=out)
        if not _is_view(func):
            inputs = {id(t): t for t in _tensors((args, kwargs))}
            outputs = {id(t): t for t in _tensors(out)}
            written = {id(t): t for t in _written_args(func, args, kwargs) if id(t) not in outputs}
            moved = sum(map(_nbytes, inputs.values())) + sum(map(_nbytes, outputs.values())) + sum(
                map(_nbytes, written.values()))
            self.bytes += moved
            self.bytes_by_op[str(packet)] += moved
        for t in _tensors(out):
            self._add(t)
        return out


@contextmanager
def counting(device: torch.device, alive: Iterable[torch.Tensor] = ()) -> Iterator[OpCounter]:
    """Count everything run inside; on meta tensors with fused attention and fused AdamW allowed (torch refuses
    ``fused=True`` on meta only by a device check: the kernel has a meta implementation)."""
    counter = OpCounter(device)
    counter.track(alive)
    with mock.patch("torch.optim.adam._device_dtype_check_for_fused", lambda *a, **k: None), \
            _FusedAttention(), counter:
        yield counter


# ------------------------------------------------------------------------------------------------------ the step


@dataclass
class StepCost:
    """Counted cost of one training step at ``batch_size`` (per process)."""

    batch_size: int
    flops: float
    bytes: float
    peak_bytes: float
    syncs: dict[str, int] = field(default_factory=dict)
    bytes_by_op: dict[str, float] = field(default_factory=dict)

    def step_s(self, gpu: GPU, bf16: bool = True) -> float:
        """Modelled step time on ``gpu``: FLOPs at the dense peak + bytes at the memory bandwidth."""
        return self.flops / (gpu.bf16_flops if bf16 else gpu.fp32_flops) + self.bytes / gpu.bandwidth


def synthetic_masks(n_global: int, batch: int, grid: int, masked_per_sample: float) -> torch.Tensor:
    """iBOT masks [G, B, grid, grid] with exactly ``round(batch × masked_per_sample)`` masked patches spread over the
    first global crop of every sample (deterministic, so counts at two batch sizes extrapolate linearly)."""
    masks = torch.zeros(n_global, batch, grid * grid, dtype=torch.bool)
    total = round(batch * masked_per_sample)
    per, extra = divmod(total, batch)
    for i in range(batch):
        masks[0, i, : per + (1 if i < extra else 0)] = True
    return masks.view(n_global, batch, grid, grid)


def expected_masked_per_sample(cfg: Any) -> float:
    """Masked patches per sample the loader draws on average: n_global × mask_probability × mean ratio × patches."""
    d = cfg.data
    n = (d.global_size // cfg.model.patch_size) ** 2
    return d.n_global * d.mask_probability * sum(d.mask_ratio) / 2 * n


def synthetic_batch(cfg: Any, batch: int, device: torch.device, masked_per_sample: float | None = None
                    ) -> dict[str, Any]:
    """A collated batch of the config's shapes on ``device`` (crops uninitialised on meta, zeros elsewhere)."""
    from dinocell_core.ssl.data import step_index_tensors

    d = cfg.data
    planes = cfg.data.mode.in_chans if cfg.data.mode.kind == "fluorescent_stack" else 1
    grid = d.global_size // cfg.model.patch_size
    masked = expected_masked_per_sample(cfg) if masked_per_sample is None else masked_per_sample
    masks = synthetic_masks(d.n_global, batch, grid, masked)
    fields = [f"field{i}" for i in range(batch)]
    out: dict[str, Any] = {
        "global": torch.zeros(d.n_global, batch, planes, d.global_size, d.global_size, device=device),
        "local": torch.zeros(d.n_local, batch, planes, d.local_size, d.local_size, device=device),
        "masks": masks.to(device), "fields": fields, "n_failed": 0, "failures": []}
    out.update({k: v.to(device) for k, v in step_index_tensors(masks, fields).items()})
    return out


def count_trainer_step(cfg: Any, batch: int, precision_device: str = "cuda") -> StepCost:
    """Count one unfrozen training step of ``cfg`` at ``batch`` samples per process on meta tensors, as it runs on
    ``precision_device`` (``train.precision: auto`` is bf16 on CUDA); the second of two steps (AdamW state exists)
    with the Sinkhorn queue full."""
    from dinocell_core.runs.distributed import DistInfo
    from dinocell_core.ssl.trainer import Trainer, compute_dtype_for

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch, "compile": False})})
    meta = torch.device("meta")
    with torch.device(meta):
        trainer = Trainer(cfg, meta, DistInfo(), load_weights=False)
    trainer.student.compute_dtype = trainer.teacher.compute_dtype = compute_dtype_for(
        cfg.train.precision, torch.device(precision_device))
    if trainer.queue is not None:
        trainer.queue.load(torch.zeros(trainer.queue.size, cfg.heads.bottleneck_dim, device=meta))
    data = synthetic_batch(cfg, batch, meta)
    step = trainer.spec.freeze_backbone_steps + trainer.spec.backbone_ramp_steps  # the backbone trains
    alive = [*trainer.student.parameters(), *trainer.student.buffers(), *trainer.teacher.parameters(),
             *trainer.teacher.buffers(), *_tensors(data), *_tensors(trainer.queue.rows if trainer.queue else None)]
    with counting(meta, alive) as counter:
        trainer.train_step(data, step)
        counter.reset()
        trainer.train_step(data, step + 1)
    return StepCost(batch, counter.flops, counter.bytes, float(counter.peak), dict(counter.syncs),
                    dict(counter.bytes_by_op))


# ------------------------------------------------------------------------------------------------------ the plan


def hardware_plan(cfg: Any) -> dict[str, Any]:
    """Peak memory and modelled step time of ``cfg`` per named GPU, and the largest batch that fits each card.

    Counted at ``train.batch_size`` and at about half of it: the figures at the configured batch are counts, not
    extrapolations (at 2–4 samples the official stochastic depth's ⌊B·0.9⌋ subsets and the rounding of masked
    patches bend the line), and the per-sample slope between the two counts gives the largest batch per card."""
    batch = cfg.train.batch_size
    b0 = max(2, batch // 2)
    b1 = max(batch, b0 + 2)
    c0, c1 = count_trainer_step(cfg, b0), count_trainer_step(cfg, b1)

    def at(attr: str, b: float) -> float:
        y0, y1 = getattr(c0, attr), getattr(c1, attr)
        return y0 + (y1 - y0) / (b1 - b0) * (b - b0)

    cost = StepCost(batch, at("flops", batch), at("bytes", batch), at("peak_bytes", batch))
    bf16 = cfg.train.precision in ("auto", "bf16")
    per_sample = (c1.peak_bytes - c0.peak_bytes) / (b1 - b0)
    fixed = c0.peak_bytes - per_sample * b0
    max_batch = {name: max(0, math.floor(((g.memory - RESERVED_BYTES) / FRAGMENTATION - fixed) / per_sample))
                 for name, g in GPUS.items()}
    return {
        "peak_memory_gb": cost.peak_bytes / 1e9,
        "step_s": {name: cost.step_s(g, bf16) for name, g in GPUS.items()},
        "hardware": {
            "batch_size": batch, "flops_per_step": cost.flops, "bytes_per_step": cost.bytes,
            "peak_memory_gb_fixed": fixed / 1e9, "peak_memory_gb_per_sample": per_sample / 1e9,
            "fits": {name: fits(cost.peak_bytes, g) for name, g in GPUS.items()}, "max_batch": max_batch,
            "host_syncs_per_step": sum(c1.syncs.values()), "counted_at_batches": [b0, b1],
            "reserved_gb": RESERVED_BYTES / 1e9, "fragmentation": FRAGMENTATION,
        },
    }


def main() -> int:
    """``python -m dinocell_core.ssl.cost`` reads a pretraining config (JSON) on stdin and prints
    :func:`hardware_plan` as JSON: the ``--plan`` command runs it in a child process and stays torch-free."""
    from dinocell_core.config import validate_config
    from dinocell_core.ssl.config import PretrainConfig

    torch.set_num_threads(1)
    cfg = validate_config(PretrainConfig, json.load(sys.stdin), "plan config")
    json.dump(hardware_plan(cfg), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
