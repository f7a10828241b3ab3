"""Backbone parity with an independent implementation of the official DINOv3 forward (official key layout).

No weights can be downloaded here, so checkpoints are random tensors laid out exactly like the release
``.pth`` (188 keys for ViT-S/16); the reference forward below is written from the official architecture
(RoPE on patch tokens only, masked K bias, LayerScale, LayerNorm eps 1e-5), not from timm.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from dinocell_core.backbones.loading import load_backbone
from dinocell_core.backbones.vit import DinoBackbone, WeightsError

D, DEPTH, HEADS = 192, 4, 3  # vit_test


def official_checkpoint(patch: int = 16, seed: int = 0, release_mask: bool = False, dim: int = D,
                        depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """Random weights in the official layout; non-trivial LayerScale and q/v biases so every path matters."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    hd = dim // HEADS
    sd = {
        "cls_token": rnd(1, 1, dim, std=1.0),
        "storage_tokens": rnd(1, 4, dim, std=1.0),
        "mask_token": rnd(1, dim, std=1.0),
        "patch_embed.proj.weight": rnd(dim, 3, patch, patch, std=1.0 / patch),
        "patch_embed.proj.bias": rnd(dim, std=0.1),
        # bf16-rounded like the release file
        "rope_embed.periods": (100.0 ** (2 * torch.arange(hd // 4) / (hd // 2))).to(torch.bfloat16).float(),
        "norm.weight": 1 + rnd(dim, std=0.1),
        "norm.bias": rnd(dim, std=0.1),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        mask = torch.zeros(3 * dim) if release_mask else torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
        sd.update({
            p + "norm1.weight": 1 + rnd(dim, std=0.1), p + "norm1.bias": rnd(dim, std=0.1),
            p + "attn.qkv.weight": rnd(3 * dim, dim, std=0.08), p + "attn.qkv.bias": rnd(3 * dim, std=0.5),
            p + "attn.qkv.bias_mask": mask,
            p + "attn.proj.weight": rnd(dim, dim, std=0.05), p + "attn.proj.bias": rnd(dim, std=0.05),
            p + "ls1.gamma": rnd(dim, std=0.3), p + "ls2.gamma": rnd(dim, std=0.3),
            p + "norm2.weight": 1 + rnd(dim, std=0.1), p + "norm2.bias": rnd(dim, std=0.1),
            p + "mlp.fc1.weight": rnd(4 * dim, dim, std=0.05), p + "mlp.fc1.bias": rnd(4 * dim, std=0.05),
            p + "mlp.fc2.weight": rnd(dim, 4 * dim, std=0.03), p + "mlp.fc2.bias": rnd(dim, std=0.05),
        })
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int = HEADS,
                      masks: torch.Tensor | None = None, keep: tuple[int, ...] = ()) -> dict[str, object]:
    """The official DINOv3 ViT forward, written from the architecture description (not from timm)."""
    w = sd["patch_embed.proj.weight"]
    dim, patch = w.shape[0], w.shape[-1]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=patch)
    b, _, gh, gw = t.shape
    t = t.flatten(2).transpose(1, 2)
    if masks is not None:
        t = torch.where(masks.reshape(b, -1, 1), sd["mask_token"].reshape(1, 1, dim), t)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), sd["storage_tokens"].expand(b, -1, -1), t], dim=1)
    hd = dim // heads
    ch = (torch.arange(gh, dtype=torch.float32) + 0.5) / gh * 2 - 1
    cw = (torch.arange(gw, dtype=torch.float32) + 0.5) / gw * 2 - 1
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).reshape(-1, 2)
    angles = 2 * math.pi * coords[:, :, None] / sd["rope_embed.periods"][None, None, :]
    angles = angles.flatten(1).tile(2)
    cos, sin = angles.cos(), angles.sin()

    def rope(u: torch.Tensor) -> torch.Tensor:
        pre, pt = u[:, :, :5], u[:, :, 5:]
        u1, u2 = pt.chunk(2, dim=-1)
        return torch.cat([pre, pt * cos + torch.cat([-u2, u1], dim=-1) * sin], dim=2)

    def ln(u: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(u, (dim,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    inter = {}
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(t, p + "norm1")
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] * sd[p + "attn.qkv.bias_mask"])
        q, k, v = qkv.reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        att = att.transpose(1, 2).reshape(b, -1, dim)
        t = t + sd[p + "ls1.gamma"] * F.linear(att, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = ln(t, p + "norm2")
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + sd[p + "ls2.gamma"] * y
        if i in keep:
            inter[i] = ln(t, "norm")[:, 5:]
    t = ln(t, "norm")
    return {"cls": t[:, 0], "registers": t[:, 1:5], "patches": t[:, 5:], "inter": inter}


def _save(tmp_path, sd, name="official.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def _smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)


@pytest.mark.parametrize("release_mask", [False, True])
def test_parity_with_official_forward(tmp_path, release_mask):
    sd = official_checkpoint(patch=16, release_mask=release_mask)
    model = load_backbone("vit_test", patch_size=16, weights=_save(tmp_path, sd)).eval()
    with torch.no_grad():
        for h, w in [(64, 64), (48, 96), (112, 32)]:
            x = torch.randn(2, 3, h, w)
            ours = model.forward_tokens(x)
            ref = reference_forward(sd, x)
            for key in ("cls", "registers", "patches"):
                assert ours[key].shape == ref[key].shape
                err = (ours[key] - ref[key]).abs().max().item()
                assert err < 2e-4, (h, w, key, err)


def test_bias_mask_is_honoured(tmp_path):
    """The K third of qkv.bias must never be used; a zero bias_mask (release files) drops Q/V biases too."""
    sd = official_checkpoint(patch=16)
    x = torch.randn(1, 3, 48, 48)
    trained = load_backbone("vit_test", 16, weights=_save(tmp_path, sd, "a.pth")).eval()
    released = {**sd, **{k: torch.zeros_like(v) for k, v in sd.items() if k.endswith("bias_mask")}}
    zeroed = load_backbone("vit_test", 16, weights=_save(tmp_path, released, "b.pth")).eval()
    with torch.no_grad():
        a, b = trained.forward_tokens(x)["patches"], zeroed.forward_tokens(x)["patches"]
        assert (a - reference_forward(sd, x)["patches"]).abs().max() < 2e-4
        assert (b - reference_forward(released, x)["patches"]).abs().max() < 2e-4
        assert (a - b).abs().max() > 1e-2  # the mask changes the model: the test can tell them apart
    assert torch.count_nonzero(zeroed.vit.blocks[0].attn.q_bias) == 0


def test_masked_forward_and_intermediates(tmp_path):
    sd = official_checkpoint(patch=16, seed=1)
    model = load_backbone("vit_test", 16, weights=_save(tmp_path, sd)).eval()
    x = torch.randn(2, 3, 64, 80)
    masks = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.4
    with torch.no_grad():
        plain = model.forward_tokens(x)
        empty = model.forward_tokens(x, masks=torch.zeros_like(masks))
        for key in plain:
            assert torch.equal(plain[key], empty[key])
        masked = model.forward_tokens(x, masks=masks)
        ref = reference_forward(sd, x, masks=masks, keep=(0, 2))
        assert (masked["patches"] - ref["patches"]).abs().max() < 2e-4
        assert (masked["patches"] - plain["patches"]).abs().max() > 1e-2
        inter = model.intermediate_layers(x, [2, 0])
        ref_plain = reference_forward(sd, x, keep=(0, 2))
        assert (inter[0] - ref_plain["inter"][2]).abs().max() < 2e-4
        assert (inter[1] - ref_plain["inter"][0]).abs().max() < 2e-4
        last = model.intermediate_layers(x, [DEPTH - 1])[0]
        assert torch.allclose(last, plain["patches"], atol=1e-6)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(0, -2), b.flatten(0, -2), dim=-1)


def test_patch16_to_patch8_behaves_like_2x_upsampling(tmp_path):
    """p8 on an image ≈ p16 on the image upsampled 2× (PI-resized kernel; no position embedding to adapt)."""
    sd = official_checkpoint(patch=16, seed=2)
    path = _save(tmp_path, sd)
    p16 = load_backbone("vit_test", 16, weights=path).eval()
    p8 = load_backbone("vit_test", 8, weights=path).eval()
    assert p8.vit.patch_embed.proj.weight.shape[-1] == 8
    x = _smooth_images(2, 64, 48)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        a, b = p8.forward_tokens(x), p16.forward_tokens(up)
        assert a["patches"].shape == b["patches"].shape
        patch_cos = _cos(a["patches"], b["patches"]).mean().item()
        cls_cos = _cos(a["cls"], b["cls"]).mean().item()
        # negative control: a kernel interpolated without the (16/8)² rescale
        wrong = load_backbone("vit_test", 8, weights=path).eval()
        w16 = sd["patch_embed.proj.weight"]
        wrong.vit.patch_embed.proj.weight.copy_(F.interpolate(w16, size=(8, 8), mode="bilinear", antialias=True))
        c = wrong.forward_tokens(x)
        wrong_cos = _cos(c["patches"], b["patches"]).mean().item()
    assert patch_cos > 0.97, patch_cos
    assert cls_cos > 0.98, cls_cos
    assert wrong_cos < patch_cos - 0.05, (wrong_cos, patch_cos)


def test_gray_input_and_normalisation():
    model = load_backbone("vit_test", 8).eval()
    g = torch.rand(2, 1, 32, 40)
    x1 = model.normalize_input(g)
    x3 = model.normalize_input(g.expand(-1, 3, -1, -1))
    assert x1.shape == (2, 3, 32, 40) and torch.equal(x1, x3)
    assert torch.allclose(x1[:, 0], (g[:, 0] - 0.485) / 0.229)
    with torch.no_grad():
        assert torch.equal(model.forward_tokens(g)["cls"], model.forward_tokens(g.expand(-1, 3, -1, -1))["cls"])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.forward_tokens(torch.rand(1, 1, 30, 32))


def test_official_export_roundtrip(tmp_path):
    sd = official_checkpoint(patch=16, seed=3)
    model = load_backbone("vit_test", 8, weights=_save(tmp_path, sd)).eval()
    out = model.to_official_state_dict()
    assert set(out) == set(sd)
    for k, v in out.items():
        expected = (D, 3, 8, 8) if k == "patch_embed.proj.weight" else sd[k].shape
        assert tuple(v.shape) == tuple(expected), k
    again = load_backbone("vit_test", 8, weights=_save(tmp_path, out, "export.pth")).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model.forward_tokens(x)["patches"], again.forward_tokens(x)["patches"])
    assert torch.equal(again.vit.rope.periods, sd["rope_embed.periods"])
    assert torch.equal(again.mask_token, sd["mask_token"])


def test_vit_small_has_official_layout():
    model = load_backbone("vit_small", patch_size=16)
    off = model.to_official_state_dict()
    assert len(off) == 188
    n_params = sum(v.numel() for k, v in off.items() if not k.endswith(("bias_mask", "periods")))
    assert n_params == 21_601_152
    assert off["patch_embed.proj.weight"].shape == (384, 3, 16, 16)
    assert load_backbone("vit_small", patch_size=8).vit.patch_embed.proj.weight.shape == (384, 3, 8, 8)


def test_bad_weights_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="do not exist"):
        load_backbone("vit_test", 8, weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="width"):
        load_backbone("vit_test", 8, weights=_save(tmp_path, official_checkpoint(dim=96, depth=2), "w.pth"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"cls_token": Evil()}))  # a bare pickle: refused before anything is read
    with pytest.raises(WeightsError, match="not a PyTorch zip archive"):
        load_backbone("vit_test", 8, weights=evil)
    torch.save({"cls_token": Evil()}, evil)  # the same object inside a real torch.save archive
    with pytest.raises(WeightsError, match="tensors-only"):
        load_backbone("vit_test", 8, weights=evil)
    with pytest.raises(ValueError, match="unknown backbone arch"):
        DinoBackbone("vit_huge", 8)


def test_activation_checkpointing_gives_the_same_gradients(monkeypatch):
    """train.activation_checkpointing trades compute for memory; the masked forward and its gradients are unchanged."""
    import dinocell_core.backbones.vit as backbone_module

    calls: list[int] = []
    real_checkpoint = backbone_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    model = load_backbone("vit_test", 8).train()
    x = torch.rand(2, 3, 32, 32)
    masks = torch.rand(2, 16) < 0.3

    def grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model.forward_tokens(x, masks=masks)
        loss = out["cls"].square().mean() + out["patches"].abs().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = grads()
    assert not calls
    model.set_grad_checkpointing(True)
    ckpt_loss, ckpt = grads()
    assert len(calls) == DEPTH  # every block went through torch.utils.checkpoint
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_stack_backbone_starts_as_the_fluorescent_mean_model(tmp_path):
    """3-plane weights grown to 5 planes (``fluorescent_stack``): at these weights the stack model *is* the mean model
    — on 5 planes that all equal x it gives the 3-plane model's features on x, and on any stack those of the
    fluorescent mean — although the two normalise their inputs differently (ImageNet stats per RGB plane vs one
    mean/std for every stain; the difference is folded into the grown kernel and bias)."""
    path = _save(tmp_path, official_checkpoint(patch=16))
    mean_model = load_backbone("vit_test", 8, weights=path).eval()
    stack = load_backbone("vit_test", 8, weights=path, in_chans=5).eval()
    assert stack.in_chans == 5 and stack.vit.patch_embed.proj.weight.shape == (D, 5, 8, 8)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 32, 48, generator=g)
    planes = torch.rand(2, 5, 32, 48, generator=g)
    with torch.no_grad():
        for five, one in ((x.expand(-1, 5, -1, -1), x), (planes, planes.mean(1, keepdim=True))):
            got = stack.forward_tokens(stack.normalize_input(five))
            want = mean_model.forward_tokens(mean_model.normalize_input(one))
            for k in ("cls", "registers", "patches"):
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
    w3, w5 = mean_model.vit.patch_embed.proj.weight, stack.vit.patch_embed.proj.weight
    torch.testing.assert_close(w5[:, 2], w5[:, 0])  # every stain starts with the same filter ...
    assert (w5[:, 0] - w3.mean(1) * 3 / 5).abs().max() < 0.03 * w3.abs().max()  # ... ≈ FINO's mean_rgb(W)·3/5
    with pytest.raises(ValueError, match="five fluorescent channels"):
        stack.normalize_input(x)  # a gray image is not a stack


def test_stack_weights_record_their_planes(tmp_path):
    """A 5-plane state dict loads as a 5-plane backbone without being told, and never into a gray (3-plane) one; a
    random stack backbone starts as the random mean model of the same seed."""
    torch.manual_seed(0)
    gray = load_backbone("vit_test", 8, depth=2).eval()
    torch.manual_seed(0)
    stack = load_backbone("vit_test", 8, in_chans=5, depth=2).eval()
    x = torch.rand(1, 5, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stack.forward_tokens(stack.normalize_input(x))["cls"],
                                   gray.forward_tokens(gray.normalize_input(x.mean(1, keepdim=True)))["cls"],
                                   rtol=1e-4, atol=1e-4)
    path = _save(tmp_path, stack.to_official_state_dict(), "stack.pth")
    again = load_backbone("vit_test", 8, weights=path, depth=2).eval()
    assert again.in_chans == 5 and again.metadata()["in_chans"] == 5
    assert torch.equal(again.vit.patch_embed.proj.weight, stack.vit.patch_embed.proj.weight)
    with pytest.raises(WeightsError, match="5 input planes"):
        load_backbone("vit_test", 8, weights=path, in_chans=3, depth=2)
