"""``profile embed`` under ``precision: bf16`` (issue 24 item 5): the backbone really computes in bfloat16 (CPU
autocast takes the path a GPU takes), the vectors leave as float32 and point where fp32's do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinocell_core.jump.index import load_index
from dinocell_core.profiling.embed import BackboneEmbedder, EmbedSettings, FieldReader, make_embedder
from dinocell_core.profiling.table import ProfileError
from dinocell_core.synthetic.fixture import make_jump_fixture

#: least cosine similarity of a unit's bf16 vector to its fp32 vector, also after subtracting the mean unit: bf16
#: keeps 8 significant bits (relative rounding 2⁻⁹ per op) and a 4-block network drifts by a few parts per thousand.
#: Raw vectors of a random ViT are nearly collinear (unit to unit cosine ~0.997), so the centred cosine — what tells
#: units apart, as per-plate normalisation does for profiles — is the one that could fail (measured ≥ 0.994)
MIN_COSINE = 0.99


def _settings(precision: str) -> EmbedSettings:
    """A random tiny ViT with LayerScale 1, so its blocks shape the vectors as a trained network's do (the default
    LayerScale init leaves them almost untouched and hides any drift)."""
    return EmbedSettings(backbone="random", arch="vit_test", model_kwargs={"init_values": 1.0}, tile=64,
                         tokens="cls+mean_patch", device="cpu", channels="each", precision=precision)


def test_precision_setting() -> None:
    assert EmbedSettings().precision == "auto"
    with pytest.raises(ProfileError, match="precision"):
        EmbedSettings(precision="fp16")
    # a resume may switch precision as it may switch device: both change the vectors only within rounding
    assert _settings("bf16").fingerprint() == _settings("fp32").fingerprint()


def test_bf16_embeds_in_bfloat16_and_matches_fp32(tmp_path: Path) -> None:
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=128, seed=0).root
    s32, s16 = _settings("fp32"), _settings("bf16")
    fp32, bf16 = make_embedder(s32), make_embedder(s16)
    assert isinstance(fp32, BackboneEmbedder) and isinstance(bf16, BackboneEmbedder)
    assert (fp32.precision.name, bf16.precision.name) == ("fp32", "bf16")
    assert make_embedder(_settings("auto")).precision.name == "fp32"  # auto on a CPU
    reader = FieldReader(str(root), s32)
    units = np.concatenate([v for f in load_index(str(root)) for v in reader(f).values()])
    assert len(units) >= 16

    seen: dict[str, set[torch.dtype]] = {"fp32": set(), "bf16": set()}
    for name, emb in (("fp32", fp32), ("bf16", bf16)):
        for m in emb.backbone.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(lambda m, i, o, name=name: seen[name].add(o.dtype))
    a, b = fp32(units), bf16(units)
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (len(units), 2 * 192)
    assert not np.array_equal(a, b)  # bf16 really ran
    mean = a.mean(axis=0)
    for x, y in ((a, b), (a - mean, b - mean)):
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        assert cos.min() >= MIN_COSINE, cos.min()
