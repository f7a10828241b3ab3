"""Continued DINOv3 self-supervised pretraining (DINO + iBOT + KoLeo, EMA teacher, multi-crop) on JUMP fields.

One function, :func:`run_pretraining`, runs the same on 1 CPU process, 1 GPU, or N GPUs/nodes under ``torchrun``
(DDP). It writes the run-directory contract (``runs.py``): ``config.yaml``, ``metrics.jsonl``, ``status.json``,
``run.log``, ``checkpoints/``. Restarting on a run directory resumes from its newest verified checkpoint and
continues the same data stream; SIGTERM/SIGINT checkpoint and end in state ``stopped``.

Determinism (why a resumed run logs the same numbers as an uninterrupted one): schedules are functions of the step,
the data stream is a function of (seed, step, rank), and the torch RNG (drop path, RoPE jitter) is reseeded from
(seed, step, rank) before every step; checkpoints hold the exact student, teacher and AdamW state.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.backbones.vit import PRETRAIN_FORMAT
from dinocell_core.config import ConfigError, config_to_dict
from dinocell_core.device import resolve_device
from dinocell_core.errors import DinocellError
from dinocell_core.io.checkpoint import CheckpointManager, load_state
from dinocell_core.runs.distributed import (
    DistInfo,
    all_reduce_,
    barrier,
    broadcast_from_main,
    init_distributed,
    is_distributed,
    shutdown,
)
from dinocell_core.runs.rundir import RunDir
from dinocell_core.runs.stopping import StopRequest, stop_signals_blocked
from dinocell_core.ssl.config import PretrainConfig, check_resume_config
from dinocell_core.ssl.data import make_ssl_loader, step_index_tensors
from dinocell_core.ssl.losses import TeacherQueue
from dinocell_core.ssl.model import (
    LossWeights,
    SSLNetwork,
    set_drop_path,
    ssl_losses,
)
from dinocell_core.ssl.optim import apply_step_values, clip_module_grads, param_groups
from dinocell_core.ssl.schedules import StepValues, schedule_spec, values_at

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ helpers

class NonFiniteGuard:
    """Counts consecutive non-finite steps; too many in a row stop the run with a clear message."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.skipped = 0

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.streak = 0
            return
        self.streak += 1
        self.skipped += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", step, self.streak)
        if self.streak >= self.limit:
            raise FloatingPointError(
                f"{self.streak} consecutive steps had a non-finite loss or gradient (last at step {step}); "
                "training stopped. Lower optim.lr, check the data, or resume from the last checkpoint.")


def compute_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype every pass computes in (None: the fp32 parameters themselves); ``auto`` is bf16 on CUDA only (a
    CPU computes bf16 slower than fp32). See :class:`~dinocell_core.ssl.model.SSLNetwork` for why parameter
    copies and not autocast."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def build_networks(cfg: PretrainConfig, load_weights: bool = True) -> tuple[SSLNetwork, SSLNetwork]:
    """Student (drop path, RoPE augmentation in train mode) and its EMA teacher (same weights, eval mode).

    ``load_weights=False`` when resuming: the checkpoint holds every weight, so ``model.weights`` may have moved."""
    m = cfg.model
    backbone = load_backbone(m.arch, patch_size=m.patch_size, weights=m.weights if load_weights else None,
                             in_chans=cfg.data.mode.in_chans, rope_rescale_coords=m.rope_rescale_coords,
                             init_values=m.layerscale_init, **m.kwargs)
    set_drop_path(backbone, m.drop_path_rate, m.drop_path_profile)
    h = cfg.heads
    student = SSLNetwork(backbone, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.ibot_out_dim,
                         normalize_prototypes=h.normalize_prototypes)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher.eval()


def loss_weights(cfg: PretrainConfig) -> LossWeights:
    lc = cfg.loss
    return LossWeights(dino=lc.dino_weight, ibot=lc.ibot_weight, koleo=lc.koleo_weight,
                       student_temp=lc.student_temp, sinkhorn_iterations=lc.sinkhorn_iterations)


@torch.no_grad()
def ema_update(teacher: SSLNetwork, student: SSLNetwork, momentum: float) -> None:
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank * 7_919 + 12_345) % (2**63 - 1)


class StepInputs(NamedTuple):
    """One loader batch on the device, as a training step consumes it."""

    global_crops: torch.Tensor  # [G·B, C, H, W], standardised
    local_crops: torch.Tensor | None  # [L·B, C, h, w]
    masks: torch.Tensor  # [G·B, N] bool (iBOT)
    n_global: int
    n_local: int
    batch_size: int
    mask_indices: torch.Tensor  # [M] masked positions of masks.flatten()
    mask_weights: torch.Tensor  # [M] 1/n_masked of each masked patch's image
    groups: torch.Tensor | None  # [B] field id of each sample (KoLeo)


def prepare_batch(batch: dict[str, Any], device: torch.device, normalize: Any) -> StepInputs:
    """Loader batch → :class:`StepInputs`. The mask indices, weights and field ids come from the collate (computed on
    the host, pinned with the batch) or, for a hand-made batch, from its host masks here: copies only, no sync."""
    glob, loc, masks = batch["global"], batch["local"], batch["masks"]
    n_g, b = glob.shape[:2]
    n_l = loc.shape[0]
    idx = batch if "mask_indices" in batch else step_index_tensors(masks, batch.get("fields"))
    g = normalize(glob.to(device, non_blocking=True).flatten(0, 1))
    lc = normalize(loc.to(device, non_blocking=True).flatten(0, 1)) if n_l else None
    m = masks.to(device, non_blocking=True).flatten(0, 1).flatten(1)
    groups = idx.get("groups")
    return StepInputs(g, lc, m, n_g, n_l, b, idx["mask_indices"].to(device, non_blocking=True),
                      idx["mask_weights"].to(device, non_blocking=True),
                      None if groups is None else groups.to(device, non_blocking=True))


class PhaseTimer:
    """Accumulates wall time per phase, synchronising CUDA so GPU work is charged to the right phase."""

    def __init__(self, device: torch.device | None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Any:
        if self.device is None:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Trainer:
    """Holds the networks, optimizer and schedule; :meth:`train_step` is one SSL iteration."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, dist_info: DistInfo,
                 load_weights: bool = True) -> None:
        self.cfg = cfg
        self.device = device
        self.dist = dist_info
        torch.manual_seed(cfg.seed)  # identical initial heads on every rank and in every (re)start
        self.student, self.teacher = build_networks(cfg, load_weights)
        if cfg.train.activation_checkpointing:
            self.student.backbone.set_grad_checkpointing(True)
        self.student.to(device)
        self.teacher.to(device)
        self.spec = schedule_spec(cfg, dist_info.world_size)
        self.weights = loss_weights(cfg)
        groups = param_groups(self.student.backbone, self.student.heads(), cfg.optim.layer_decay,
                              cfg.optim.patch_embed_lr_mult)
        # one fused kernel for all parameters (CUDA and CPU): the foreach path launches ~10 ops per tensor list
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), fused=True)
        self.model: torch.nn.Module = self.student
        self._ddp_frozen: bool | None = None  # backbone-frozen state the DDP wrapper was built for
        self.student.compute_dtype = self.teacher.compute_dtype = compute_dtype_for(cfg.train.precision, device)
        self.losses = ssl_losses
        if cfg.train.compile:  # as the official trainer: backbones, heads, and here the losses with both Sinkhorns
            for net in (self.student, self.teacher):
                for part in self._parts(net).values():
                    part.compile()
            self.losses = torch.compile(ssl_losses)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite)
        self.stop_agreed = False  # the last step's stop vote (train_step's stop_requested, any rank)
        self.queue = (TeacherQueue(cfg.loss.sinkhorn_queue, self.teacher.dino_head.prototypes)
                      if cfg.loss.sinkhorn_queue else None)

    # -- state
    def state(self, step: int) -> dict[str, Any]:
        state = {
            "kind": PRETRAIN_FORMAT,
            "step": step,
            "backbone_meta": self.student.backbone.metadata(),
            "student": {k: m.state_dict() for k, m in self._parts(self.student).items()},
            "teacher": {k: m.state_dict() for k, m in self._parts(self.teacher).items()},
            "optimizer": self.optimizer.state_dict(),
            "nonfinite_skipped": self.guard.skipped,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.cfg),
        }
        if self.queue is not None and self.queue.rows is not None:
            state["dino_queue"] = self.queue.rows
        return state

    @staticmethod
    def _parts(net: SSLNetwork) -> dict[str, torch.nn.Module]:
        return {"backbone": net.backbone, "dino_head": net.dino_head, "ibot_head": net.ibot_head}

    def load(self, state: dict[str, Any]) -> int:
        for which, net in (("student", self.student), ("teacher", self.teacher)):
            for k, m in self._parts(net).items():
                m.load_state_dict(state[which][k], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.guard.skipped = int(state.get("nonfinite_skipped", 0))
        if self.queue is not None and "dino_queue" in state:  # this rank continues with the saved rank's rows
            rows = state["dino_queue"]
            if rows.ndim == 2 and rows.shape[1] == self.cfg.heads.bottleneck_dim:
                self.queue.load(rows.to(self.device))
            else:  # a checkpoint from before the queue kept embeddings held logits: those cannot be re-scored
                log.warning("the checkpoint's Sinkhorn queue holds rows of width %d, not teacher embeddings (%d): "
                            "the queue restarts empty", rows.shape[-1], self.cfg.heads.bottleneck_dim)
        return int(state["step"])

    def _wrap_ddp(self, frozen: bool) -> None:
        """DDP needs the unused-parameter search only while the backbone is frozen (its parameters get no
        gradient); the wrapper is rebuilt without it when the backbone unfreezes."""
        if not is_distributed() or self._ddp_frozen == frozen:
            return
        self.model = torch.nn.parallel.DistributedDataParallel(
            self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=frozen)
        self._ddp_frozen = frozen

    def _vote(self, ok: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
        """(finite on every rank, stop requested on any rank): one all-reduce and the one host sync of a step."""
        flags = torch.stack([(~ok).float(), torch.full((), float(stop_requested), device=ok.device)])
        bad, stop = all_reduce_(flags, "max").tolist()
        return bad == 0, stop > 0

    # -- one iteration
    def train_step(self, batch: dict[str, Any], step: int, timer: PhaseTimer | None = None,
                   stop_requested: bool = False) -> tuple[dict[str, torch.Tensor], StepValues, bool]:
        """One iteration; ``timer`` (benchmarks) accumulates forward/backward/optimizer/EMA seconds.

        The terms come back as device tensors: the caller converts them on log steps only. One host sync per step
        remains: the vote that decides whether the optimizer steps (non-finite loss or gradient on any rank) and
        whether to stop (``stop_requested`` on any rank; the verdict is in :attr:`stop_agreed`)."""
        phase = timer or PhaseTimer(None)
        v = values_at(self.spec, step)
        apply_step_values(self.optimizer, v)
        self.optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients are not kept
        self._wrap_ddp(v.backbone_frozen)
        torch.manual_seed(step_seed(self.cfg.seed, step, self.dist.rank))
        self.student.train()
        self.teacher.eval()
        with phase("forward"):
            x = prepare_batch(batch, self.device, self.student.backbone.normalize_input)
            t_out = self.teacher.teacher_forward(x.global_crops, x.masks, x.mask_indices)
            s_out = self.model(x.global_crops, x.local_crops, x.masks, x.mask_indices,
                               backbone_grad=not v.backbone_frozen)
            total, terms = self.losses(s_out, t_out, x.masks, x.n_global, x.n_local, v.teacher_temp, self.weights,
                                       x.groups, self.queue, x.mask_weights)
            queue_rows = t_out["dino_embed"]
            del t_out, s_out  # the teacher's logits (bf16 [masked patches, 65,536]) are not needed in backward
        with phase("backward"):
            total.backward()  # a non-finite loss gives non-finite gradients: caught below, the step is skipped
        with phase("optimizer"):
            clip = self.cfg.optim.clip_grad
            norms = {f"grad_norm_{k}": clip_module_grads(m.parameters(), clip, self.device)
                     for k, m in self._parts(self.student).items()}
            ok = torch.isfinite(total) & torch.stack([torch.isfinite(n) for n in norms.values()]).all()
            finite, self.stop_agreed = self._vote(ok, stop_requested)
            if finite:
                self.optimizer.step()
        if finite:
            with phase("ema"):
                ema_update(self.teacher, self.student, v.momentum)
            if self.queue is not None:
                self.queue.push(queue_rows)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.guard.update(finite, step)
        return {**terms, **norms}, v, finite


# ------------------------------------------------------------------------------------------------------ run

def run_pretraining(cfg: PretrainConfig, run_dir: str | os.PathLike[str], allow_config_change: bool = False) -> None:
    """Train (or resume) in ``run_dir``; under torchrun every rank calls this (rank 0 writes the run files).

    ``allow_config_change``: resume although the config differs from the checkpoint's (the user's explicit
    ``--allow-config-change``; the changes are recorded in the run). A stop requested before the first step (the
    CLI installs its :class:`StopRequest` first thing) ends the run "stopped" without a step."""
    device_hint = "cuda" if cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist_info = init_distributed(device_hint)
    run = RunDir(run_dir)
    lock = run.lock()
    try:
        # a refusal leaves the run's files and state alone
        resume_path = _preflight(cfg, run, dist_info, lock, allow_config_change)
        try:
            _run(cfg, run, dist_info, resume_path)
        except BaseException as exc:
            if dist_info.is_main:
                run.update_status(state="failed", error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, (DinocellError, FloatingPointError)):
                log.error("pretraining failed: %s", exc)
            else:
                log.exception("pretraining failed")
            raise
    finally:
        lock.release()
        shutdown()


def _preflight(cfg: PretrainConfig, run: RunDir, dist_info: DistInfo, lock: Any,
               allow_config_change: bool = False) -> Path | None:
    """Rank 0 takes the run's writer lock, removes temp files a killed writer left, and checks a resume against
    the config stored in the checkpoint (config.yaml may have been edited; :meth:`RunDir.resume_config`), recording
    changes the user explicitly allowed; every rank learns the verdict."""
    error: BaseException | None = None
    resume_path = None
    if dist_info.is_main:
        try:
            lock.acquire()
            run.remove_orphan_temp_files()
            ckpts = CheckpointManager(run.checkpoints_dir)
            resume_path = ckpts.resume_point()
            if resume_path is not None:
                old, source = run.resume_config(resume_path)
                changes = check_resume_config(old, cfg, source, allow_config_change)
                if changes:
                    run.record_config_changes(changes, resume_path)
                    log.warning("resuming with config changes the user allowed: %s", ", ".join(sorted(changes)))
        except DinocellError as exc:
            error = exc
    verdict = broadcast_from_main(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        log.error("pretraining refused: %s", error)
        raise error
    if verdict is not None:
        raise DinocellError(f"rank 0 refused the run: {verdict}")
    return resume_path


def _run(cfg: PretrainConfig, run: RunDir, dist_info: DistInfo, resume_path: Path | None) -> None:
    main = dist_info.is_main
    device = resolve_device(cfg.train.device, key="train.device", local_rank=dist_info.local_rank)
    ckpts = CheckpointManager(run.checkpoints_dir, keep_last=cfg.train.keep_last, keep_every=cfg.train.keep_every)
    if not main:
        resume_path = ckpts.latest() if run.checkpoints_dir.is_dir() else None
    if main:
        run.write_config(cfg)
    barrier()
    total = cfg.train.total_steps
    trainer = Trainer(cfg, device, dist_info, load_weights=resume_path is None)
    step = 0
    counters = [0, 0]  # this rank's good samples and failed reads so far (the failure budget)
    if resume_path is not None:
        state = load_state(resume_path, map_location=device)
        if state.get("kind") != PRETRAIN_FORMAT:
            raise ConfigError(f"{resume_path}: not a pretraining checkpoint")
        step = trainer.load(state)
        counters = _restored_counters(state.get("data_counters"), dist_info)
        if int(state.get("world_size", dist_info.world_size)) != dist_info.world_size:
            log.warning("resuming a %s-process run on %d processes: the global batch, the LR scaling and the data "
                        "order change from here on", state.get("world_size"), dist_info.world_size)
        del state
        log.info("resumed from %s at step %d", resume_path, step)
    if main:  # also without a checkpoint: a run killed before its first one re-logs its steps from 0
        run.truncate_metrics_after(step)
    n_params = sum(p.numel() for p in trainer.student.parameters())
    log.info("pretraining %s/p%d (%.1fM params incl. heads) on %s ×%d, batch %d/process, %d steps, peak lr %.3g",
             cfg.model.arch, cfg.model.patch_size, n_params / 1e6, device, dist_info.world_size,
             cfg.train.batch_size, total, trainer.spec.lr)
    if main:
        run.update_status(state="running", kind="pretrain", pid=os.getpid(), host=socket.gethostname(), step=step,
                          total_steps=total, error=None, started_at=time.time(),
                          last_checkpoint=str(resume_path) if resume_path else None,
                          world_size=dist_info.world_size)
    if step >= total:
        if main:
            run.update_status(state="finished", step=step)
        return
    tb = _tensorboard(run) if (main and cfg.train.tensorboard) else None
    loader = make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, cfg.seed, rank=dist_info.rank,
                             world_size=dist_info.world_size, start_step=step, steps=total - step,
                             pin_memory=device.type == "cuda")
    loader.budget.n_ok, loader.budget.n_failed = counters
    bar = _progress(cfg, total, step) if main else None
    evaluator = _evaluator(cfg, device) if main else None
    window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0}
    stopped = False
    last_ckpt: Path | None = resume_path
    n_failed = counters[1]
    try:
        with StopRequest() as stop:  # the CLI's, when it installed one first (a stop during start-up is in it)
            # a stop during start-up (any rank): no step, no worker started, the last checkpoint stays
            stopped = bool(all_reduce_(torch.tensor(float(stop.requested), device=device), "max").item())
            if not stopped:
                with stop_signals_blocked():  # DataLoader workers start here: they must outlive a process-group TERM
                    it = iter(loader)
            while step < total and not stopped:
                t_wait = time.perf_counter()
                batch = next(it)
                window["wait"] += time.perf_counter() - t_wait
                n_failed += int(batch["n_failed"])
                terms, v, finite = trainer.train_step(batch, step, stop_requested=stop.requested)
                step += 1
                window["samples"] += cfg.train.batch_size * dist_info.world_size
                if bar is not None:
                    bar.update(1)
                eval_due = cfg.eval.every > 0 and step % cfg.eval.every == 0
                if step % cfg.train.log_every == 0 or step == total or not finite or eval_due:
                    record = _record(cfg, trainer, terms, v, step, window, finite, n_failed, device)
                    if evaluator is not None and eval_due:
                        record.update(evaluator(trainer.teacher.backbone))
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss_total']:.3f}", refresh=False)
                    window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0}
                    if main:
                        run.append_metrics(record)
                        eta = (total - step) * record["step_time_s"]
                        run.update_status(step=step, samples_per_s=record["samples_per_s"], eta_s=eta)
                        if tb is not None:
                            for k, x in record.items():
                                if isinstance(x, (int, float)) and k != "step":
                                    tb.add_scalar(k, x, step)
                want_stop = trainer.stop_agreed  # voted in the step's one host sync
                if step % cfg.train.checkpoint_every == 0 or step == total or want_stop:
                    last_ckpt = _checkpoint(trainer, ckpts, step, run, main, loader.budget, device)
                if want_stop:
                    stopped = True
                    break
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    if main:
        run.update_status(state="stopped" if stopped else "finished", step=step,
                          last_checkpoint=str(last_ckpt) if last_ckpt else None)
    log.info("pretraining %s at step %d/%d", "stopped" if stopped else "finished", step, total)


def _checkpoint(trainer: Trainer, ckpts: CheckpointManager, step: int, run: RunDir, main: bool, budget: Any,
                device: torch.device) -> Path | None:
    """Every rank calls this: the failure-budget counters of all ranks travel in rank 0's checkpoint."""
    ws = trainer.dist.world_size
    counts = torch.zeros(ws, 2, dtype=torch.float64, device=device)
    counts[trainer.dist.rank, 0], counts[trainer.dist.rank, 1] = budget.n_ok, budget.n_failed
    all_reduce_(counts)
    path = None
    if main:
        state = trainer.state(step)
        state["data_counters"] = [[int(a), int(b)] for a, b in counts.tolist()]
        path = ckpts.save(step, state)
        run.update_status(last_checkpoint=str(path), step=step)
        log.info("checkpoint %s", path)
    barrier()
    return path


def _restored_counters(saved: Any, dist_info: DistInfo) -> list[int]:
    """This rank's [good samples, failed reads] from a checkpoint; on another world size, the mean per rank."""
    if not saved:
        return [0, 0]
    if len(saved) == dist_info.world_size:
        return [int(x) for x in saved[dist_info.rank]]
    return [sum(int(r[i]) for r in saved) // dist_info.world_size for i in (0, 1)]


def _record(cfg: PretrainConfig, trainer: Trainer, terms: dict[str, torch.Tensor], v: StepValues, step: int,
            window: dict[str, float], finite: bool, n_failed: int, device: torch.device) -> dict[str, Any]:
    keys = sorted(terms)  # one stacked copy to the host (and one all-reduce: the mean over ranks)
    t = torch.stack([terms[k].detach().to(device, torch.float64).reshape(()) for k in keys])
    if is_distributed():  # collective: every rank logs the same steps
        all_reduce_(t)
        t = t / trainer.dist.world_size
    terms = {k: float(x) for k, x in zip(keys, t.tolist())}
    elapsed = max(1e-9, time.perf_counter() - window["t0"])
    steps_in_window = max(1, window["samples"] // (cfg.train.batch_size * trainer.dist.world_size))
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {
        "step": step,
        "epoch": step / cfg.train.steps_per_epoch,
        "lr": v.lr, "last_layer_lr": v.last_layer_lr, "backbone_lr_factor": v.backbone_factor,
        "wd": v.weight_decay, "momentum": v.momentum, "teacher_temp": v.teacher_temp,
        **terms,
        "skipped": not finite,
        "nonfinite_skipped_total": trainer.guard.skipped,
        "failed_reads": n_failed,
        "samples_per_s": window["samples"] / elapsed,
        "step_time_s": elapsed / steps_in_window,
        "data_wait_fraction": window["wait"] / elapsed,
        "peak_gpu_mem_gb": peak,
    }


def _evaluator(cfg: PretrainConfig, device: torch.device) -> Any:
    """The ``eval:`` benchmark (held-out plates → copairs mAP), or None when ``eval.every`` is 0."""
    if not cfg.eval.every:
        return None
    from dinocell_core.ssl.evaluation import TrainingEvaluator

    return TrainingEvaluator(cfg, device)


def _progress(cfg: PretrainConfig, total: int, step: int) -> Any:
    if not cfg.train.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=step, desc="pretrain", unit="it", dynamic_ncols=True)


def _tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("train.tensorboard is true but tensorboard is not installed "
                          "(pip install 'dinocell[tensorboard]')") from exc
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
