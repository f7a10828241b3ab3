"""SSL losses, Sinkhorn-Knopp, schedules and parameter groups against hand-computed small cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.ssl.heads import DINOHead
from dinocell_core.ssl.losses import (
    TeacherQueue,
    dino_loss,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
)
from dinocell_core.ssl.model import LossWeights, ssl_losses
from dinocell_core.ssl.optim import apply_step_values, param_groups, scaled_lr
from dinocell_core.ssl.schedules import ScheduleSpec, values_at


def test_sinkhorn_is_doubly_normalised():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 16, generator=g) * 0.3 + torch.linspace(0, 0.5, 16)  # prototypes used unequally
    q = sinkhorn_knopp(logits, temperature=0.1, n_iterations=3)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)  # every row is a distribution
    cols = q.sum(0)
    soft_cols = torch.softmax(logits / 0.1, dim=-1).sum(0)
    target = torch.full((16,), 64 / 16)
    assert (cols - target).abs().max() < 0.1 * (soft_cols - target).abs().max()  # far more balanced
    q50 = sinkhorn_knopp(logits, temperature=0.1, n_iterations=50)
    assert torch.allclose(q50.sum(0), target, atol=1e-3) and torch.allclose(q50.sum(1), torch.ones(64), atol=1e-5)


def _sinkhorn_plain(logits, temp, iters=3):
    """The official algorithm verbatim (float64 so the reference itself does not overflow)."""
    q = torch.exp(logits.double() / temp).t()
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


def test_sinkhorn_matches_official_iterations_and_is_stable():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 8, generator=g)
    assert torch.allclose(sinkhorn_knopp(logits, 0.1), _sinkhorn_plain(logits, 0.1).float(), atol=1e-6)
    big = torch.randn(16, 8, generator=g) * 8  # exp(8 / 0.04) overflows fp32: the plain form gives inf/nan
    assert not torch.isfinite(torch.exp(big / 0.04)).all()
    q = sinkhorn_knopp(big, 0.04)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)
    assert torch.allclose(q, _sinkhorn_plain(big, 0.04).float(), atol=1e-5)
    assert sinkhorn_knopp(torch.zeros(0, 8), 0.04).shape == (0, 8)


SPLITS = ((7, 13), (0, 20))  # rows of rank 0 and rank 1: uneven, and a rank without rows


def _split_logits() -> torch.Tensor:
    return torch.randn(20, 24, generator=torch.Generator().manual_seed(5)) * 6


def _sinkhorn_on_rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    logits = _split_logits()
    for i, rows in enumerate(SPLITS):
        start = rows[0] if rank else 0
        torch.save(sinkhorn_knopp(logits[start : start + rows[rank]], 0.04), f"{out}.{i}.{rank}")
    dist.destroy_process_group()


def test_sinkhorn_across_ranks_is_one_process_on_all_rows(tmp_path):
    """Rows split over 2 gloo ranks: column maxima and sums run over both, so the targets are those of one process
    on every row."""
    torch.multiprocessing.spawn(_sinkhorn_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "q")), nprocs=2)
    want = sinkhorn_knopp(_split_logits(), 0.04)
    for i in range(len(SPLITS)):
        got = torch.cat([torch.load(tmp_path / f"q.{i}.{rank}") for rank in (0, 1)])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_dino_loss_hand_computed():
    s = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # 2 student crops, B=1, K=2
    t = torch.tensor([[[0.75, 0.25]], [[0.1, 0.9]]])  # 2 teacher crops
    tau = 0.5
    logp = [[math.log(math.exp(a / tau) / (math.exp(1 / tau * s[i, 0, 0]) + math.exp(1 / tau * s[i, 0, 1])))
             for a in s[i, 0].tolist()] for i in range(2)]
    ce = [[-(t[j, 0, 0] * logp[i][0] + t[j, 0, 1] * logp[i][1]).item() for j in range(2)] for i in range(2)]
    full = sum(ce[i][j] for i in range(2) for j in range(2)) / 4
    cross = (ce[0][1] + ce[1][0]) / 2
    assert dino_loss(s, t, tau).item() == pytest.approx(full, rel=1e-6)
    assert dino_loss(s, t, tau, ignore_diagonal=True).item() == pytest.approx(cross, rel=1e-6)


def test_ibot_loss_hand_computed():
    masks = torch.tensor([[True, True, False], [False, False, False]])  # image 0: 2 masked patches; image 1: none
    s = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    tau = 1.0
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(0.5)
    expected = (0.5 * ce0 + 0.5 * ce1) / 2  # per-image 1/n_masked, divided by the number of images
    assert ibot_loss(s, t, masks, tau).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="masked logits"):
        ibot_loss(s[:1], t[:1], masks, tau)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ibot_loss_gradient_is_autograds(dtype):
    """The hand-written backward (written into the log-softmax buffer) gives autograd's gradient of the plain
    formula, for targets whose rows do not sum to 1 too, and bf16 logits get a bf16 gradient."""
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(3, 10, generator=g) < 0.5
    m = int(masks.sum())
    logits = (torch.randn(m, 16, generator=g) * 3).to(dtype).requires_grad_()
    t = torch.rand(m, 16, generator=g)
    w = torch.rand(m, generator=g)
    ibot_loss(logits, t, masks, 0.1, w).backward()
    ref = logits.detach().float().requires_grad_()
    plain = -((t * F.log_softmax(ref / 0.1, dim=-1)).sum(-1) * w).sum() / masks.shape[0]
    plain.backward()
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.float(), ref.grad, rtol=1e-5 if dtype == torch.float32 else 1e-2,
                               atol=1e-5 if dtype == torch.float32 else 1e-2)
    with torch.no_grad():
        assert float(ibot_loss(logits, t, masks, 0.1, w)) == pytest.approx(float(plain), rel=1e-5)


def test_koleo_hand_computed_and_guard():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + 0.5)  # every point's nearest neighbour is at this distance
    assert koleo_loss(x).item() == pytest.approx(-math.log(d), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(x[:1])


def test_total_loss_follows_official_combination():
    g = torch.Generator().manual_seed(1)
    n_g, n_l, b, k, n = 2, 3, 4, 8, 6
    masks = torch.rand(n_g * b, n, generator=g) < 0.5
    m = int(masks.sum())
    student = {"dino_logits": torch.randn((n_g + n_l) * b, k, generator=g),
               "ibot_logits": torch.randn(m, k, generator=g), "cls_global": torch.randn(n_g * b, 5, generator=g)}
    teacher = {"dino_logits": torch.randn(n_g * b, k, generator=g), "ibot_logits": torch.randn(m, k, generator=g),
               "cls_global": torch.randn(n_g * b, 5, generator=g)}
    w = LossWeights(dino=1.0, ibot=0.7, koleo=0.1, student_temp=0.1)
    total, terms = ssl_losses(student, teacher, masks, n_g, n_l, 0.05, w)
    tp = sinkhorn_knopp(teacher["dino_logits"], 0.05).view(n_g, b, k)
    sd = student["dino_logits"]
    local = dino_loss(sd[n_g * b:].view(n_l, b, k), tp)
    glob = dino_loss(sd[: n_g * b].view(n_g, b, k), tp, ignore_diagonal=True)
    ibot = ibot_loss(student["ibot_logits"], sinkhorn_knopp(teacher["ibot_logits"], 0.05), masks)
    koleo = sum(koleo_loss(c) for c in student["cls_global"].view(n_g, b, -1))
    expected = 1.0 * (6 / 8 * local + 2 / 8 * glob) + 0.1 * koleo + 0.7 * ibot
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["loss_koleo"].item() == pytest.approx(koleo.item(), rel=1e-6)
    assert 0 < terms["teacher_entropy"].item() <= math.log(k) + 1e-5


def test_schedules():
    spec = ScheduleSpec(total_steps=100, lr=1.0, min_lr=0.01, warmup_steps=10, weight_decay=0.04,
                        weight_decay_end=0.2, momentum=0.996, momentum_end=1.0, teacher_temp_start=0.04,
                        teacher_temp=0.07, teacher_temp_warmup_steps=20, freeze_last_layer_steps=5,
                        freeze_backbone_steps=30, backbone_ramp_steps=10)
    v0, v5, v10, v99 = (values_at(spec, s) for s in (0, 5, 10, 99))
    assert v0.lr == 0.0 and v5.lr == pytest.approx(0.5) and v10.lr == pytest.approx(1.0)
    assert v99.lr == pytest.approx(0.01, abs=1e-3)
    assert values_at(spec, 55).lr == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)  # half-way through the cosine
    assert v0.last_layer_lr == 0.0 and v5.last_layer_lr == v5.lr
    assert v0.weight_decay == pytest.approx(0.04) and values_at(spec, 100).weight_decay == pytest.approx(0.2)
    assert v0.momentum == pytest.approx(0.996) and values_at(spec, 100).momentum == pytest.approx(1.0)
    assert v0.teacher_temp == pytest.approx(0.04) and values_at(spec, 10).teacher_temp == pytest.approx(0.055)
    assert values_at(spec, 20).teacher_temp == pytest.approx(0.07)
    assert values_at(spec, 29).backbone_factor == 0.0 and values_at(spec, 30).backbone_factor == pytest.approx(0.1)
    assert values_at(spec, 39).backbone_factor == pytest.approx(1.0)


def test_param_groups_layer_decay_and_no_decay():
    bb = load_backbone("vit_test", 8)
    heads = {"dino_head": DINOHead(bb.embed_dim, 32, 16, 8), "ibot_head": DINOHead(bb.embed_dim, 32, 16, 8)}
    groups = param_groups(bb, heads, layer_decay=0.9, patch_embed_lr_mult=0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    n_params = sum(1 for _ in bb.parameters()) + sum(1 for h in heads.values() for _ in h.parameters())
    assert len(by_name) == n_params
    L = bb.num_blocks
    assert by_name["vit.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.9 ** (L + 1) * 0.2)
    assert by_name["vit.cls_token"]["lr_mult"] == pytest.approx(0.9 ** (L + 1))
    assert by_name["vit.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.9 ** L)
    assert by_name[f"vit.blocks.{L - 1}.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.9)
    assert by_name["vit.norm.weight"]["lr_mult"] == 1.0 and by_name["dino_head.mlp.0.weight"]["lr_mult"] == 1.0
    for name in ("vit.blocks.0.attn.q_bias", "vit.blocks.0.norm1.weight", "vit.blocks.1.gamma_1",
                 "dino_head.mlp.0.bias"):
        assert by_name[name]["wd_mult"] == 0.0, name
    for name in ("vit.cls_token", "vit.reg_token", "mask_token", "vit.blocks.0.attn.qkv.weight"):
        assert by_name[name]["wd_mult"] == 1.0, name
    assert by_name["ibot_head.last_layer.weight"]["is_last_layer"]
    opt = torch.optim.AdamW(groups)
    spec = ScheduleSpec(10, 1.0, 0.0, 0, 0.1, 0.1, 0.9, 0.9, 0.04, 0.04, 0, 5, freeze_backbone_steps=2)
    apply_step_values(opt, values_at(spec, 0))
    for g in opt.param_groups:
        if g["is_backbone"]:
            assert g["lr"] == 0.0 and g["weight_decay"] == 0.0  # heads-only warm start
        elif g["is_last_layer"]:
            assert g["lr"] == 0.0
        else:
            assert g["lr"] == pytest.approx(1.0)


def test_lr_scaling_rule():
    assert scaled_lr(5e-5, "sqrt_wrt_1024", 48) == pytest.approx(4.33e-5, rel=1e-3)
    assert scaled_lr(1e-3, "sqrt_wrt_1024", 1024) == pytest.approx(4e-3)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, "bogus", 8)


def test_koleo_never_takes_a_same_field_sibling():
    """Two near-identical crops per field: without groups each one's neighbour is its sibling (tiny distance,
    large loss); with groups the neighbour is a crop of another field."""
    g = torch.Generator().manual_seed(0)
    fields = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    x = torch.cat([fields, fields + 1e-3 * torch.randn(4, 8, generator=g)])  # crops 0..3 and their siblings 4..7
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    plain, grouped = koleo_loss(x), koleo_loss(x, groups)
    d = torch.cdist(fields, fields)
    d.fill_diagonal_(float("inf"))
    want = -torch.log(d.min(1).values).mean()  # nearest *other* field
    assert plain > 5.0 and grouped == pytest.approx(float(want), abs=2e-3)


def test_sinkhorn_target_entropy_floor_with_few_rows():
    """Equipartition over K prototypes with N rows keeps each row's entropy ≥ ln(K/N): why one GPU (N = 96 CLS
    rows) uses fewer DINO prototypes (docs/pretraining.md)."""
    g = torch.Generator().manual_seed(0)
    for n, k in ((96, 2048), (96, 65536 // 8)):
        logits = torch.randn(n, k, generator=g) * 3.0  # sharp: a plain softmax at 0.04 would be near one-hot
        q = sinkhorn_knopp(logits, 0.04, 3)
        ent = -(q * q.clamp_min(1e-12).log()).sum(-1)
        assert ent.mean() >= math.log(k / n) - 0.05  # 3 iterations: equipartition holds on average


def test_teacher_queue_lets_two_views_share_a_prototype():
    """With fewer rows than prototypes, Sinkhorn gives the two views of one image different prototypes (each row
    needs a share of its own); normalised together with a queue of earlier embeddings, they share one. The queue keeps
    the newest embeddings and its targets are still distributions over the prototypes."""
    g = torch.Generator().manual_seed(0)
    k, n_img = 64, 8
    head = torch.nn.Linear(16, k, bias=False)
    with torch.no_grad():
        head.weight.copy_(F.normalize(torch.randn(k, 16, generator=g), dim=-1))
    def views(n: int) -> torch.Tensor:  # bottleneck embeddings of two slightly different views of n images
        z = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
        pair = torch.stack([z + 0.01 * torch.randn(n, 16, generator=g), z + 0.01 * torch.randn(n, 16, generator=g)])
        return F.normalize(pair, dim=-1).reshape(2 * n, 16)
    def agreement(q: torch.Tensor) -> float:
        a, b = q.view(2, n_img, k).argmax(-1)
        return float((a == b).float().mean())

    batch = views(n_img)
    with torch.no_grad():
        logits = head(batch)
    assert agreement(sinkhorn_knopp(logits, 0.01, 3)) == 0.0
    queue = TeacherQueue(1024, head)
    for _ in range(64):
        queue.push(views(n_img))
    assert queue.rows.shape == (1024, 16)  # embeddings, not logits
    kept = queue.rows.clone()
    q = queue.targets(logits, 0.01, 3)
    torch.testing.assert_close(q.sum(-1), torch.ones(2 * n_img))
    assert agreement(q) >= 0.75
    assert torch.equal(queue.rows, kept)  # targets leave the queue alone: the trainer pushes after a finite step
    queue.push(batch)
    torch.testing.assert_close(queue.rows[: 2 * n_img], batch)  # newest first, the oldest rows left
    torch.testing.assert_close(queue.rows[2 * n_img:], kept[: 1024 - 2 * n_img])
    with pytest.raises(ValueError, match="at least one row"):
        TeacherQueue(0, head)


def test_teacher_queue_rescores_with_the_current_prototypes():
    """SwAV: the queued embeddings are scored by the prototypes of *this* step (the teacher head moves every step),
    so the targets equal Sinkhorn over the batch and the queue re-scored now — not over logits stored earlier."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 32, bias=False)
    queue = TeacherQueue(64, head)
    queue.push(F.normalize(torch.randn(64, 8, generator=g), dim=-1))
    batch = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    before = queue.targets(head(batch).detach(), 0.05, 3)
    with torch.no_grad():
        head.weight.mul_(-1.0).add_(0.1 * torch.randn(32, 8, generator=g))  # the prototypes move
        logits, now = head(batch), head(queue.rows)
    after = queue.targets(logits, 0.05, 3)
    torch.testing.assert_close(after, sinkhorn_knopp(torch.cat([logits, now]), 0.05, 3)[:6])
    assert not torch.allclose(before, after)


def test_plain_last_layer_can_shrink_normalised_cannot():
    """Unit-norm prototypes (heads.normalize_prototypes) bound the logits by the cosine: the head cannot flatten
    its output by shrinking the last layer, the uniform fixed point of small random-init runs."""
    torch.manual_seed(0)
    plain, normed = DINOHead(16, 32, 8, 4, 2), DINOHead(16, 32, 8, 4, 2, normalize_prototypes=True)
    x = torch.randn(5, 16)
    for head in (plain, normed):
        head.last_layer.weight.data.mul_(1e-3)
    assert plain(x).abs().max() < 1e-2
    assert normed(x).abs().max() > 0.3 and normed(x).abs().max() <= 1.0 + 1e-6


def test_drop_path_profile_uniform_and_linear():
    from dinocell_core.ssl.model import set_drop_path

    bb = load_backbone("vit_test", 8, depth=4)
    assert set_drop_path(bb, 0.1, "uniform") == [0.1] * 4
    assert [blk.drop_path1.drop_prob for blk in bb.vit.blocks] == [0.1] * 4
    rates = set_drop_path(bb, 0.3, "linear")
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert isinstance(bb.vit.blocks[0].drop_path2, torch.nn.Identity)


def test_native_pixel_crop_boxes():
    import numpy as np

    from dinocell_core.ssl.augment import sample_crop_box_px

    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = sample_crop_box_px(rng, 300, 200, (64, 96))
        assert 0 <= top <= 300 - h and 0 <= left <= 200 - w
        assert 64 * 0.85 <= math.sqrt(h * w) <= 96 * 1.05
    assert sample_crop_box_px(rng, 300, 200, (64, 64))[2:] == (64, 64)  # fixed side: native pixels, square
    top, left, h, w = sample_crop_box_px(rng, 50, 40, (64, 64))
    assert (h, w) == (50, 40)  # clipped to the field
