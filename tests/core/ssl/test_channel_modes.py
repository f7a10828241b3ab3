"""Channel-aware SSL inputs (issue 23): one fluorescent channel per sample, the 5-plane fluorescent stack (and every
loader of a stack backbone), views from another site of the well, intensity jitter of raw counts before
normalisation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from dinocell_core.io.images import normalize_percentile
from dinocell_core.jump.channels import FLUORESCENT, ChannelMode
from dinocell_core.jump.index import load_index
from dinocell_core.jump.preprocess import read_field
from dinocell_core.ssl.augment import intensity_curve
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import NoFieldsError, SSLFieldDataset, make_ssl_loader
from dinocell_core.synthetic.fixture import make_jump_fixture

PATCH = 8
#: no geometry, blur or noise: what is left of a crop is its box and its intensity
PLAIN = {"flips": False, "rot90": False, "blur_p": (0.0, 0.0, 0.0), "noise_p": 0.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("modes"), plates=2, wells=3, sites=3, size=96, seed=2).root


def _cfg(root, **kw) -> DataConfig:
    base = dict(root=str(root), global_size=48, local_size=24, n_local=4, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def test_modes_parse_and_know_their_planes():
    assert ChannelMode.parse("fluorescent_single").kind == "fluorescent_single"
    assert ChannelMode.parse("fluorescent_stack").in_chans == 5
    assert ChannelMode.parse("fluorescent_mean").in_chans == ChannelMode.parse("channel:DNA").in_chans == 3
    assert str(ChannelMode.parse("fluorescent_stack")) == "fluorescent_stack"
    with pytest.raises(ValueError, match="fluorescent_single"):
        ChannelMode.parse("fluorescent")


def test_fluorescent_single_is_balanced_and_one_channel_per_sample(root):
    """Each sample is one fluorescent channel (both globals and every local), the stream holds each channel equally
    often, and the draw is a function of the sample id (a second dataset, or a resumed one, agrees)."""
    ds = SSLFieldDataset(_cfg(root, channel_mode="fluorescent_single"), PATCH, seed=3)
    again = SSLFieldDataset(_cfg(root, channel_mode="fluorescent_single"), PATCH, seed=3)
    seen = []
    for i in range(20):
        s = ds[(i, i)]
        assert len(set(s["views"])) == 1 and len(s["views"]) == 2 + 4
        seen.append(int(s["views"][0]))
        assert again[(i, i)]["views"] == s["views"]
        np.testing.assert_array_equal(again[(i, i)]["global"][1], s["global"][1])
    assert Counter(seen) == {ch: 4 for ch in FLUORESCENT}
    assert seen != sorted(seen)  # drawn per sample, not in channel order


def test_fluorescent_single_crops_are_the_channel(root):
    """Without jitter a crop is the normalised channel itself (not the mean, not another stain)."""
    cfg = _cfg(root, channel_mode="fluorescent_single", augment={**PLAIN, "intensity_p": 0.0},
               global_crop_px=(48, 48), local_crop_px=(24, 24))
    ds = SSLFieldDataset(cfg, PATCH, seed=0)
    s = ds[(0, 0)]
    field = ds.fields[ds.field_for_slot(0)]
    whole = ds.view(field, int(s["views"][0]))
    crop = s["global"][0]
    hits = [(y, x) for y in range(49) for x in range(49) if np.allclose(whole[y:y + 48, x:x + 48], crop, atol=1e-5)]
    assert hits, "the crop is a window of its channel"


def test_fluorescent_stack_batches_have_five_planes(root):
    cfg = _cfg(root, channel_mode="fluorescent_stack")
    (batch,) = list(make_ssl_loader(cfg, PATCH, batch_size=3, seed=1, steps=1))
    assert batch["global"].shape == (2, 3, 5, 48, 48) and batch["local"].shape == (4, 3, 5, 24, 24)
    assert batch["views"][0] == ["stack"] * 6
    g = batch["global"]
    assert torch.isfinite(g).all() and float(g.min()) >= -0.5 and float(g.max()) <= 2.0
    assert not torch.equal(g[:, :, 0], g[:, :, 4])  # Mito and DNA planes differ


def test_same_well_views_never_come_from_one_site(root):
    """The second global crop and the second half of the locals come from another site of the anchor's well — never
    from the anchor's site, never from another well."""
    ds = SSLFieldDataset(_cfg(root, second_view="same_well"), PATCH, seed=0)
    for i in range(24):
        s = ds[(i, i)]
        anchor = s["field"]
        plate, well, site, _ = anchor.split("/")
        crops = s["crop_fields"]  # globals, then locals
        own = [crops[0], *crops[2:4]]
        other = [crops[1], *crops[4:6]]
        assert all(c == anchor for c in own)
        assert len(set(other)) == 1
        o_plate, o_well, o_site, _ = other[0].split("/")
        assert (o_plate, o_well) == (plate, well) and o_site != site


def test_same_well_skips_single_site_wells_and_refuses_when_none_is_left(tmp_path, root):
    fields = load_index(root)
    lone = [f for f in fields if not (f.well == "A01" and f.site > 1)]  # A01 keeps one site on every plate
    ds = SSLFieldDataset(_cfg(root, second_view="same_well"), PATCH, seed=0, fields=lone)
    assert ds.partners.skipped_wells == 2
    starts = {ds.fields[ds.field_for_slot(i)].well for i in range(len(ds.partners.eligible))}
    assert "A01" not in starts and starts == {"A02", "A03"}
    one_site = make_jump_fixture(tmp_path / "one", plates=1, wells=2, sites=1, size=64, seed=0).root
    with pytest.raises(NoFieldsError, match=r"at least 2 sites.*A01"):
        SSLFieldDataset(_cfg(one_site, second_view="same_well"), PATCH, seed=0)


def test_intensity_jitter_acts_on_raw_counts_before_normalisation(root):
    """Order, checked directly: jitter the raw counts of a field, *then* normalise with the field's percentiles —
    a gain and an offset cancel (as exposure does in real data), a gamma stays; the crop path gives the same."""
    field = load_index(root)[0]
    raw = read_field(root, field, [1])[0].astype(np.float32)
    base = normalize_percentile(raw)
    lo, hi = np.percentile(raw[::1, ::1], [1.0, 99.8])
    for gamma, gain, offset in ((1.0, 3.0, 0.2), (1.0, 0.4, -0.1), (0.6, 2.0, 0.1), (1.6, 1.0, 0.0)):
        jittered, _, _ = intensity_curve(raw, lo, hi, gamma, gain, offset)
        after = normalize_percentile(jittered)  # the percentiles of the jittered field itself
        expected = base if gamma == 1.0 else base ** gamma
        np.testing.assert_allclose(after, expected, atol=2e-3)
        if gamma != 1.0:
            assert np.abs(after - base).max() > 0.1  # normalisation does not undo a gamma
    # jitter after normalisation would not cancel: a gain of 3 on the normalised image stays (clipped at 1)
    assert np.abs(np.clip(3.0 * base, 0, 1) - base).max() > 0.5


def test_dataset_jitters_before_normalising(root):
    """In the stream: with only gain/offset jitter (gamma 1) every crop equals the un-jittered crop — per-field
    normalisation cancels them; a gamma of 0.5 gives exactly the un-jittered crop's square root."""
    def crops(**augment):
        cfg = _cfg(root, channel_mode="fluorescent_stack", augment={**PLAIN, **augment})
        s = SSLFieldDataset(cfg, PATCH, seed=4)[(5, 5)]
        return np.stack(s["global"]), np.stack(s["local"])

    plain = crops(intensity_p=0.0)
    cancelled = crops(intensity_p=1.0, gamma=(1.0, 1.0), gain=(0.25, 4.0), offset=(-0.3, 0.3))
    bent = crops(intensity_p=1.0, gamma=(0.5, 0.5), gain=(0.25, 4.0), offset=(-0.3, 0.3))
    for p, c, b in zip(plain, cancelled, bent):
        np.testing.assert_allclose(c, p, atol=1e-5)
        np.testing.assert_allclose(b, np.sqrt(p), atol=1e-4)
        assert np.abs(b - p).max() > 0.1


# ------------------------------------------------------------------------------- a stack backbone, end to end

@pytest.fixture(scope="module")
def stack_run(fixture_root, tmp_path_factory):
    """Two steps of fluorescent_stack pretraining (tiny demo config) and the export of its teacher."""
    from dinocell_core.ssl.export import export_backbone
    from dinocell_core.ssl.trainer import run_pretraining
    from tests.helpers.pretrain import tiny_config

    out = tmp_path_factory.mktemp("stack")
    cfg = tiny_config(fixture_root, 2, **{"data.channel_mode": "fluorescent_stack", "train.checkpoint_every": 2})
    run_pretraining(cfg, out / "run")
    return out / "run", export_backbone(out / "run", out / "export" / "stack")


def test_stack_warm_start_is_the_mean_model_at_step_0(fixture_root, tmp_path):
    """``model.weights`` (a 3-plane file) with fluorescent_stack: the student and teacher backbones grow to 5 planes
    and, before any step, give the 3-plane model's features on the fluorescent mean of their input."""
    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.ssl.trainer import build_networks
    from tests.helpers.pretrain import tiny_config

    torch.manual_seed(0)
    gray = load_backbone("vit_test", 8, depth=2, init_values=0.5)
    weights = tmp_path / "gray.pth"
    torch.save(gray.to_official_state_dict(), weights)
    cfg = tiny_config(fixture_root, 2, **{"data.channel_mode": "fluorescent_stack", "model.weights": str(weights)})
    student, teacher = build_networks(cfg)
    (batch,) = list(make_ssl_loader(cfg.data, 8, batch_size=2, seed=0, steps=1))
    x = batch["global"][0]  # [B, 5, H, W]
    ref = load_backbone("vit_test", 8, weights=weights, depth=2).eval()
    with torch.no_grad():
        want = ref.forward_tokens(ref.normalize_input(x.mean(1, keepdim=True)))
        for net in (student, teacher):
            bb = net.backbone.eval()
            assert bb.in_chans == 5
            got = bb.forward_tokens(bb.normalize_input(x))
            for k in ("cls", "patches"):
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_stack_export_round_trip_records_in_chans(stack_run):
    """The export records its 5 input planes, and every loader builds a 5-plane backbone from it (and from the run)
    with the teacher's exact features."""
    from dinocell_core.backbones.loading import (
        backbone_from_weights,
        load_backbone,
        teacher_backbone,
    )

    run, (pth, st, js) = stack_run
    assert json.loads(js.read_text())["in_chans"] == 5
    teacher, _ = teacher_backbone(run)
    x = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        want = teacher.eval().forward_tokens(teacher.normalize_input(x))["cls"]
        for bb in (backbone_from_weights(str(st)), backbone_from_weights(str(run)),
                   load_backbone("vit_test", 8, weights=pth, depth=2), load_backbone("vit_test", 8, weights=run,
                                                                                     depth=2)):
            assert bb.in_chans == 5
            torch.testing.assert_close(bb.eval().forward_tokens(bb.normalize_input(x))["cls"], want)


@pytest.mark.slow
def test_stack_backbone_everywhere_else(stack_run, fixture_root, tmp_path):
    """Decoders are single-channel: a stack backbone is refused by name (training and bundles); feature PCA looks at
    the five fluorescent channels; profiles embed the stack directly (one ``stack`` view)."""
    from dinocell_core.backbones.archs import ArchitectureError
    from dinocell_core.backbones.loading import backbone_from_weights
    from dinocell_core.backbones.pca import FeaturePCA, iter_feature_pca
    from dinocell_core.profiling.embed import (
        BackboneEmbedder,
        EmbedSettings,
        FieldReader,
        feature_names,
        readout_views,
    )
    from dinocell_core.seg.bundle import BundleError, check_architecture
    from dinocell_core.seg.decoder import DistanceDecoder

    _, (_, st, _) = stack_run
    bb = backbone_from_weights(str(st))
    with pytest.raises(ArchitectureError, match="fluorescent_stack"):
        DistanceDecoder(bb)
    meta = {"backbone": {"arch": "vit_test", "patch_size": 8, "kwargs": {"depth": 2}, "in_chans": 5},
            "decoder": {"layers": [1], "width": 16, "stem_width": 8}}
    with pytest.raises(BundleError, match=r"1 channel\(s\) cannot hold a 5-plane backbone \(backbone.in_chans 5\)"):
        check_architecture(tmp_path / "b.safetensors", meta)

    stack = np.random.default_rng(0).integers(100, 4000, (5, 40, 48)).astype(np.uint16)
    result = [r for r in iter_feature_pca(stack, bb, tile=32) if isinstance(r, FeaturePCA)][0]
    assert result.rgb.shape == (5, 6, 3)
    with pytest.raises(ValueError, match="5 input planes"):
        list(iter_feature_pca(stack[0], bb))

    settings = EmbedSettings(backbone="random", arch="vit_test", channels="each", tile=32)
    embedder = BackboneEmbedder(bb, "cpu", "cls", 8, "stack")
    assert readout_views(settings, embedder.in_chans) == [("stack", tuple(FLUORESCENT))]
    reader = FieldReader(str(fixture_root), settings, in_chans=embedder.in_chans)
    units = reader(load_index(fixture_root)[0])
    assert list(units) == ["stack"] and units["stack"].shape[1:] == (5, 32, 32)
    feats = embedder(units["stack"])
    assert feats.shape == (len(units["stack"]), bb.embed_dim) and np.isfinite(feats).all()
    assert feature_names(settings, embedder)[0].startswith("stack_cls")
