"""The training step near the roofline (issue 24 item 2) and its counted cost (item 3): host syncs counted by op on
CPU and meta tensors, the scaling-vector Sinkhorn against the log-domain iterations, compiled losses and bf16
parameter copies against eager fp32, fused AdamW, and the per-op counts behind ``pretrain --plan``."""

from __future__ import annotations

import math

import pytest
import torch

from dinocell_core.runs.distributed import DistInfo
from dinocell_core.ssl.cost import (
    GPUS,
    DataDependentOp,
    StepCost,
    count_trainer_step,
    counting,
    fits,
    hardware_plan,
    synthetic_masks,
)
from dinocell_core.ssl.data import make_ssl_loader
from dinocell_core.ssl.losses import masked_patch_weights, sinkhorn_knopp
from dinocell_core.ssl.model import LossWeights, ssl_losses
from dinocell_core.ssl.trainer import Trainer
from tests.helpers.pretrain import tiny_config


def _one_batch(cfg):
    return next(iter(make_ssl_loader(cfg.data, cfg.model.patch_size, cfg.train.batch_size, cfg.seed, steps=1)))


def test_sync_proxy_counts_what_would_stall_a_gpu():
    x = torch.arange(6.0)
    with counting(torch.device("cpu")) as c:
        _ = x[x > 2]  # boolean mask: the output size needs the data
        float(x.sum())  # scalar read
        x.nonzero()
        _ = x.index_select(0, torch.tensor([0, 2]))  # index tensor: no sync
    assert sum(c.syncs.values()) == 3, c.syncs
    meta = torch.device("meta")
    y = torch.ones(4, device=meta)
    with counting(meta) as c:
        torch.tensor([1.0, 2.0]).to(meta)  # pageable host → device, blocking
        torch.tensor([1.0]).to(meta, non_blocking=True)  # not counted
        assert y.sum().tolist() == 0.0  # device → host: counted, answered with zeros on meta
    assert sum(c.syncs.values()) == 2, c.syncs
    with counting(meta), pytest.raises(DataDependentOp, match="nonzero"):
        y.nonzero()


def test_training_step_has_one_host_sync(fixture_root):
    """≤ 1 host sync per step outside log steps: counted on meta tensors (host↔device copies show there) and on a
    real CPU step of the tiny config (scalar reads and data-dependent shapes)."""
    cfg = tiny_config(fixture_root, 10)
    assert sum(count_trainer_step(cfg, 4).syncs.values()) == 1
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    batch = _one_batch(cfg)
    trainer.train_step(batch, 0)
    with counting(torch.device("cpu")) as c:
        _, _, finite = trainer.train_step(batch, 1)
    assert finite and sum(c.syncs.values()) <= 1, c.syncs


def _sinkhorn_log_iterations(logits, temp, iters=3):
    """The previous implementation: the full [K, N] log-domain iterates, total normalisation first."""
    q = logits.double().t() / temp
    k, n = q.shape
    q = q - torch.logsumexp(q.flatten(), 0)
    for _ in range(iters):
        q = q - torch.logsumexp(q, 1, keepdim=True) - math.log(k)
        q = q - torch.logsumexp(q, 0, keepdim=True) - math.log(n)
    return torch.exp(q + math.log(n)).t()


@pytest.mark.parametrize("scale,temp,iters", [(1.0, 0.1, 3), (8.0, 0.04, 3), (0.2, 0.04, 1), (3.0, 0.07, 5)])
def test_scaling_vector_sinkhorn_is_the_log_domain_iteration(scale, temp, iters):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(40, 24, generator=g) * scale
    want = _sinkhorn_log_iterations(logits, temp, iters).float()
    torch.testing.assert_close(sinkhorn_knopp(logits, temp, iters), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sinkhorn_knopp(logits.bfloat16(), temp, iters),
                               _sinkhorn_log_iterations(logits.bfloat16().float(), temp, iters).float(),
                               rtol=1e-4, atol=1e-5)  # bf16 logits: computed in fp32 all the same


def _loss_inputs(seed=0, n_g=2, n_l=3, b=4, k=32, n=12):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n_g * b, n, generator=g) < 0.4
    m = int(masks.sum())
    student = {"dino_logits": torch.randn((n_g + n_l) * b, k, generator=g, requires_grad=True),
               "ibot_logits": torch.randn(m, k, generator=g, requires_grad=True),
               "cls_global": torch.randn(n_g * b, 8, generator=g, requires_grad=True)}
    teacher = {"dino_logits": torch.randn(n_g * b, k, generator=g), "ibot_logits": torch.randn(m, k, generator=g),
               "cls_global": torch.randn(n_g * b, 8, generator=g)}
    return student, teacher, masks, n_g, n_l


def test_compiled_losses_match_eager():
    """train.compile compiles the losses with both Sinkhorns (as the official trainer compiles its iBOT Sinkhorn):
    same total, terms and gradients as eager."""
    w = LossWeights()
    compiled = torch.compile(ssl_losses)
    for seed in (0, 1):  # a second shape (masked count) too: dynamic, no wrong cached graph
        student, teacher, masks, n_g, n_l = _loss_inputs(seed)
        extra = (torch.arange(masks.shape[0] // n_g) // 2, None, masked_patch_weights(masks))  # as the trainer
        total, terms = ssl_losses(student, teacher, masks, n_g, n_l, 0.05, w, *extra)
        grads = torch.autograd.grad(total, list(student.values()))
        total_c, terms_c = compiled(student, teacher, masks, n_g, n_l, 0.05, w, *extra)
        grads_c = torch.autograd.grad(total_c, list(student.values()))
        torch.testing.assert_close(total_c, total, rtol=1e-5, atol=1e-5)
        for key in terms:
            torch.testing.assert_close(terms_c[key], terms[key], rtol=1e-4, atol=1e-5)
        for a, b in zip(grads_c, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_parameter_copies_keep_the_stream_bf16_and_track_fp32(fixture_root):
    """precision bf16: the residual stream stays bf16 (no fp32 copies between blocks, as the official FSDP2 mixed
    precision), the fp32 parameters get fp32 gradients, and the losses follow fp32 within bf16 rounding."""
    batch = None
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(fixture_root, 10, **{"train.precision": precision, "model.drop_path_rate": 0.0})
        trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
        assert trainer.optimizer.defaults["fused"] is True  # fused AdamW on the CPU too
        batch = batch or _one_batch(cfg)
        dtypes = []
        hooks = [blk.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
                 for blk in trainer.student.backbone.vit.blocks]
        terms, _, finite = trainer.train_step(batch, 0)
        for h in hooks:
            h.remove()
        assert finite and set(dtypes) == {torch.float32 if precision == "fp32" else torch.bfloat16}
        assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
                   for p in trainer.student.parameters())
        losses[precision] = float(terms["loss_total"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_counted_cost_is_linear_in_the_batch_and_the_plan_uses_it(fixture_root):
    cfg = tiny_config(fixture_root, 10, **{"model.drop_path_rate": 0.0})
    # the peak is the largest live total over the step, linear in the batch once one point of the step holds it
    # (at batch 4 of this tiny config a point that grows more slowly does)
    c8, c12, c16 = (count_trainer_step(cfg, b) for b in (8, 12, 16))
    for attr in ("flops", "bytes", "peak_bytes"):
        a, b, c = getattr(c8, attr), getattr(c12, attr), getattr(c16, attr)
        assert b > a > 0 and (c - b) == pytest.approx(b - a, rel=0.05), attr
    assert c8.flops > 0 and c12.syncs == c8.syncs
    plan = hardware_plan(cfg)
    assert set(plan) == {"peak_memory_gb", "step_s", "hardware"} and set(plan["step_s"]) == set(GPUS)
    direct = count_trainer_step(cfg, cfg.train.batch_size)
    assert plan["peak_memory_gb"] == pytest.approx(direct.peak_bytes / 1e9)
    a100 = GPUS["A100-40"]
    bf16 = cfg.train.precision in ("auto", "bf16")  # on a GPU
    assert plan["step_s"]["A100-40"] == pytest.approx(direct.step_s(a100, bf16))
    assert all(plan["hardware"]["fits"].values())  # a tiny model fits every card
    assert fits(30e9, a100) and not fits(40e9, a100)
    assert StepCost(1, 312e12, 1.555e12, 0.0).step_s(a100) == pytest.approx(2.0)


def test_synthetic_masks_hold_the_expected_count():
    m = synthetic_masks(2, 5, 4, 3.4)
    assert m.shape == (2, 5, 4, 4) and int(m.sum()) == 17 and not m[1].any()
