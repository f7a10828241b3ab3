"""Model bundles: one self-contained safetensors file per segmentation model (backbone + decoder weights) with
JSON metadata saying what it is for and how to run it. A folder of bundles is the model registry.

Loading verifies the file's digest and never unpickles (``.pt``/``.pth`` files are refused outright: unpickling
a file someone sent you can run arbitrary code).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dinocell_core.backbones.archs import (
    ArchitectureError,
    backbone_params,
    check_backbone,
    check_decoder,
    check_memory,
    decoder_params,
)
from dinocell_core.errors import DinocellError
from dinocell_core.seg.config import MAX_MODEL_CHANNELS, bundle_channels
from dinocell_core.io.checkpoint import (
    CheckpointError,
    load_tensors,
    read_header,
    read_meta,
    save_tensors,
)

log = logging.getLogger(__name__)

FORMAT = "dinocell-bundle/1"
SUFFIX = ".safetensors"
REQUIRED = ("name", "channel", "backbone", "decoder", "preprocessing", "thresholds", "tile_size")
MAX_TILE = 4096


class BundleError(DinocellError, ValueError):
    """A file is not a usable DINOCell model bundle (the message names the file and why)."""


@dataclass
class BundleInfo:
    """What the registry knows about a bundle without loading its weights."""

    name: str
    channel: str
    path: Path
    metadata: dict[str, Any]
    problem: str | None = None  # set (and the bundle unusable) when listed with include_broken=True


@dataclass
class Bundle:
    """A loaded, verified bundle: metadata + state dict of the whole :class:`DistanceDecoder`."""

    path: Path
    metadata: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def channels(self) -> list[str]:
        """The channels the model reads, in its input order (one for bundles from before multichannel models)."""
        return bundle_channels(self.metadata)

    @property
    def channel(self) -> str:
        return str(self.metadata["channel"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.metadata["thresholds"])

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network with this bundle's weights, in eval mode (no download: the backbone is built empty)."""
        from dinocell_core.backbones.loading import load_backbone
        from dinocell_core.seg.decoder import DistanceDecoder

        bb_meta, dec = check_architecture(self.path, self.metadata)
        backbone = load_backbone(bb_meta["arch"], patch_size=int(bb_meta["patch_size"]), weights=None,
                                 source=str(self.path), in_chans=int(bb_meta.get("in_chans", 3)),
                                 **(bb_meta.get("kwargs") or {}))
        model = DistanceDecoder(backbone, layers=dec["layers"], width=int(dec["width"]),
                                stem_width=int(dec["stem_width"]), in_channels=len(self.channels))
        try:
            model.load_state_dict(restore_aliases(self.state_dict, self.metadata.get("aliases", {})), strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.path}: weights do not fit the architecture in its metadata: {exc}") from None
        return model.to(device).eval()


def _refuse_pickle(p: Path) -> None:
    if p.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise BundleError(f"{p}: pickled PyTorch files are not loaded (unpickling can run arbitrary code); "
                          "use a DINOCell .safetensors bundle")


def save_bundle(path: str | os.PathLike[str], model: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s full state dict + ``metadata`` (must hold the keys in ``REQUIRED``) atomically."""
    p = Path(path)
    if p.suffix != SUFFIX:
        raise BundleError(f"{p}: bundle files must end in {SUFFIX}")
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise BundleError(f"{p}: bundle metadata lacks {', '.join(missing)}")
    tensors, aliases = unique_state(model.state_dict())
    meta = {"format": FORMAT, **metadata, "aliases": aliases}
    json.dumps(meta)  # fail here, not at load time, on non-JSON metadata
    p.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(p, tensors, meta)
    return p


def unique_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop entries that share storage with an earlier one (modules registered under two names) — safetensors
    refuses shared tensors; ``aliases`` maps each dropped name to the kept one."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        kept[k] = v
    return kept, aliases


def restore_aliases(tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for dup, src in aliases.items():
        out[dup] = tensors[src]
    return out


def check_architecture(p: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Allow-list the architecture fields of a bundle and check the memory it needs, before anything is built."""
    bb, dec = meta.get("backbone"), meta.get("decoder")
    if not isinstance(bb, dict):
        raise BundleError(f"{p}: backbone must be a mapping, got {type(bb).__name__}")
    planes, n_in = bb.get("in_chans", 3), len(bundle_channels(meta))
    if planes not in (3, 5) or isinstance(planes, bool):
        raise BundleError(f"{p}: backbone.in_chans {planes!r} is not supported (3, or 5 for a fluorescent_stack "
                          "backbone)")
    if n_in > planes or (n_in == 1 and planes != 3):  # seg.decoder: channels fill the planes, one channel needs 3
        raise BundleError(f"{p}: a model reading {n_in} channel(s) cannot hold a {planes}-plane backbone "
                          f"(backbone.in_chans {planes})")
    try:
        spec = check_backbone(bb.get("arch"), bb.get("patch_size"), bb.get("kwargs"), str(p))
        if meta.get("tile_size", bb["patch_size"]) % bb["patch_size"]:
            raise BundleError(f"{p}: tile_size {meta['tile_size']} is not a multiple of backbone.patch_size "
                              f"{bb['patch_size']}")
        depth = int((bb.get("kwargs") or {}).get("depth", spec.depth))
        check_decoder(dec, depth, str(p))
        n_params = backbone_params(spec, int(bb["patch_size"]), depth) + decoder_params(dec, spec.embed_dim)
        check_memory(n_params, str(p))
    except ArchitectureError as exc:
        raise BundleError(str(exc)) from None
    return bb, dec


def _check_meta(p: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(f"{p}: not a DINOCell model bundle (format {found!r}, "
                          f"expected {FORMAT!r}; a backbone export or training checkpoint is not a segmentation model)")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"{p}: bundle metadata lacks {', '.join(missing)}")
    if not isinstance(meta["name"], str) or not meta["name"].strip():
        raise BundleError(f"{p}: name must be a non-empty text, got {meta['name']!r}")
    if isinstance(meta["channel"], bool) or not isinstance(meta["channel"], (str, int)):
        raise BundleError(f"{p}: channel must be a channel name or number, got {meta['channel']!r}")
    chans = meta.get("channels")
    if chans is not None and (not isinstance(chans, list) or not 1 <= len(chans) <= MAX_MODEL_CHANNELS
                              or not all(isinstance(c, str) and c.strip() for c in chans)
                              or len(set(chans)) != len(chans)):
        raise BundleError(f"{p}: channels must list 1–{MAX_MODEL_CHANNELS} distinct channel names, got {chans!r}")
    _check_run_settings(p, meta)
    _check_preprocessing(p, meta["preprocessing"])
    return meta


def _check_preprocessing(p: Path, pre: Any) -> None:
    """The normalisation a bundle asks for: percentiles ``0 ≤ low < high ≤ 100`` (low 99.8, high 1 inverted
    every image and gave no cells, with no word)."""
    if not isinstance(pre, dict):
        raise BundleError(f"{p}: preprocessing must be a mapping with low and high percentiles, got {pre!r}")
    if pre.get("normalisation", "percentile") != "percentile":
        raise BundleError(f"{p}: preprocessing.normalisation {pre.get('normalisation')!r} is not supported "
                          "(percentile)")
    for key in ("low", "high"):
        v = pre.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise BundleError(f"{p}: preprocessing.{key} must be a percentile in [0, 100], got {v!r}")
    if not pre["low"] < pre["high"]:
        raise BundleError(f"{p}: preprocessing.low ({pre['low']}) must be below preprocessing.high ({pre['high']})")
    ci = pre.get("channel_index")
    if ci is not None and (isinstance(ci, bool) or not isinstance(ci, int) or ci < 0):
        raise BundleError(f"{p}: preprocessing.channel_index must be an integer ≥ 0 or null, got {ci!r}")


def _check_run_settings(p: Path, meta: dict[str, Any]) -> None:
    """Thresholds and tiling a bundle asks for: finite and in range (they decide what the user gets)."""
    th = meta["thresholds"]
    if not isinstance(th, dict):
        raise BundleError(f"{p}: thresholds must be a mapping")
    for key, low_open in (("peak", True), ("fill", False)):
        v = th.get(key)
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not v < 1
                or not (v > 0 if low_open else v >= 0)):
            raise BundleError(f"{p}: thresholds.{key} must be a number in {'(' if low_open else '['}0, 1), "
                              f"got {v!r}")
    for key, low_open, high_open in (("grow", False, True), ("ring", True, False), ("slope", False, False)):
        v = th.get(key)  # optional: bundles written before the key existed use its default
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not (v > 0 if low_open else v >= 0) or not (v < 1 if high_open else v <= 1)):
            raise BundleError(f"{p}: thresholds.{key} must be a number in {'(' if low_open else '['}0, 1"
                              f"{')' if high_open else ']'}, got {v!r}")
    ms = th.get("min_size", 0)
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise BundleError(f"{p}: thresholds.min_size must be an integer ≥ 0, got {ms!r}")
    tile = meta["tile_size"]
    if isinstance(tile, bool) or not isinstance(tile, int) or not 16 <= tile <= MAX_TILE:
        raise BundleError(f"{p}: tile_size must be an integer in [16, {MAX_TILE}], got {tile!r}")
    overlap = meta.get("overlap", 0)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= 2 * overlap < tile:
        raise BundleError(f"{p}: overlap must be an integer in [0, tile_size/2), got {overlap!r}")


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify a bundle; raises :class:`BundleError` with the reason (tampered, pickled, foreign...).

    Everything the header says is checked before a tensor byte is read: the settings, the architecture (and the
    memory it needs), and every tensor's name, dtype and shape against the model that architecture builds (made
    on the meta device, no memory) — so a small file declaring ViT-L, an extra 1 GiB tensor, or int64/float16/bool
    weights cost nothing before the refusal. Then the digest, then that every weight is finite."""
    p = Path(path)
    meta = read_bundle_metadata(p)
    try:
        header, size = read_header(p)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from None
    if p.stat().st_size != size:
        raise BundleError(f"{p}: {p.stat().st_size - size:,} bytes after the tensors its header lists (appended "
                          "data or a damaged file)")
    _check_tensor_table(p, header, meta)
    try:
        tensors, meta = load_tensors(p)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from None
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{p}: weights {key} hold NaN or infinite values; this model cannot segment")
    return Bundle(p, _check_meta(p, meta), tensors)


#: safetensors dtype codes of the tensor types a model's state dict holds
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def expected_tensors(p: Path, meta: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (safetensors dtype, shape) of every entry of the state dict the bundle's architecture builds (built
    on the meta device: no memory, no weights)."""
    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.seg.decoder import DistanceDecoder

    bb, dec = check_architecture(p, meta)
    with torch.device("meta"):
        model = DistanceDecoder(load_backbone(bb["arch"], patch_size=int(bb["patch_size"]), weights=None,
                                              in_chans=int(bb.get("in_chans", 3)), **(bb.get("kwargs") or {})),
                                layers=dec["layers"], width=int(dec["width"]), stem_width=int(dec["stem_width"]),
                                in_channels=len(bundle_channels(meta)))
    return {k: (_ST_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in model.state_dict().items()}


def _check_tensor_table(p: Path, header: dict[str, Any], meta: dict[str, Any]) -> None:
    """The header's tensors are exactly the architecture's (less its aliases), each of the dtype and shape the
    model holds: weights are never cast or reshaped on load."""
    want = expected_tensors(p, meta)
    have = {k: (str(v.get("dtype")), tuple(v.get("shape") or ())) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in aliases.items()):
        raise BundleError(f"{p}: aliases must map weight names to weight names")
    for dup, src in aliases.items():
        if dup in have or src not in have or dup not in want or want[dup] != want.get(src):
            raise BundleError(f"{p}: aliases entry {dup!r} → {src!r} does not name a shared weight of this "
                              "architecture")
    extra = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have) - set(aliases))
    if extra or missing:
        what = "; ".join(part for part in (f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                                           f"{len(missing)} missing (e.g. {missing[0]})" if missing else "") if part)
        raise BundleError(f"{p}: its tensors do not match the architecture its metadata declares "
                          f"({meta['backbone'].get('arch')}): {what}")
    for key, (dtype, shape) in have.items():
        if (dtype, shape) != want[key]:
            raise BundleError(f"{p}: weights {key} are {dtype} {list(shape)}, the architecture holds "
                              f"{want[key][0]} {list(want[key][1])}; bundles store the model's own types, never "
                              "cast on load")


def read_bundle_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata from the safetensors header alone (no tensor bytes read: listing a folder stays instant)."""
    p = Path(path)
    _refuse_pickle(p)
    try:
        meta = read_meta(p)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from None
    except OSError as exc:
        raise BundleError(f"{p}: cannot read ({type(exc).__name__}: {exc})") from None
    return _check_meta(p, meta)


def _channel_key(channel: str | int) -> str:
    from dinocell_core.jump.channels import channel_number

    try:
        return f"ch{channel_number(channel)}"
    except (ValueError, KeyError):
        return str(channel).strip().lower()


def list_bundles(folder: str | os.PathLike[str], channel: str | int | None = None,
                 include_broken: bool = False) -> list[BundleInfo]:
    """Bundles in ``folder`` (sorted by name), optionally only those reading ``channel`` (a JUMP name/number or any
    modality label such as ``phase``; a multichannel bundle is listed under each channel it reads). Files that are not usable bundles (truncated, foreign, edited) are skipped
    with a log message, or listed with ``problem`` set when ``include_broken``."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: models folder not found")
    want = _channel_key(channel) if channel is not None else None
    out = []
    for p in sorted(root.glob(f"*{SUFFIX}")):
        try:
            meta = read_bundle_metadata(p)
        except BundleError as exc:
            log.info("skipping %s", exc)
            if include_broken and channel is None:
                out.append(BundleInfo(p.stem, "?", p, {}, problem=str(exc)))
            continue
        if want is not None and want not in {_channel_key(c) for c in bundle_channels(meta)}:
            continue
        out.append(BundleInfo(str(meta["name"]), str(meta["channel"]), p, meta))
    return sorted(out, key=lambda b: (b.name, str(b.path)))
