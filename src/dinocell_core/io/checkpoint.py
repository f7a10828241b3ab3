"""Self-verifying checkpoint files: safetensors tensors + JSON metadata + one digest over both.

Nothing here unpickles. A nested training state (model, optimizer, scheduler scalars, RNG) is split into flat
tensors and a JSON skeleton; one sha256 over the canonical JSON of the metadata and every tensor byte is stored in
the header, so a truncated, corrupted, edited or foreign file is refused with a message that names it instead of
being silently loaded. (A digest proves integrity, not origin: whoever edits a file can recompute it, which is why
bundles' architecture fields are also checked against an allow-list before anything is built.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "dinocell-state/1"
_META_KEY = "dinocell"
DIGEST_VERSION = 2  # 1: tensors only (accepted metadata edits); 2: metadata + tensors


class CheckpointError(DinocellError, RuntimeError):
    """A checkpoint or bundle cannot be trusted (truncated, corrupted, tampered with, or not ours)."""


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of a 1 GB tensor
    return h.hexdigest()


def _canonical_meta(meta: Any) -> bytes:
    """The metadata as the digest sees it: what a JSON round trip gives, keys sorted, no whitespace."""
    return json.dumps(json.loads(json.dumps(meta, default=str)), sort_keys=True, separators=(",", ":")).encode()


def _full_digest(meta: Any, tensor_digest: str) -> str:
    h = hashlib.sha256(b"dinocell-digest/2\0")
    h.update(_canonical_meta(meta))
    h.update(b"\0")
    h.update(tensor_digest.encode())
    return h.hexdigest()


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by references and encode containers so int keys and tuples survive JSON."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {type(k).__name__} at {prefix!r}")
            items.append([k, _flatten(v, f"{prefix}/{k}" if prefix else str(k), tensors)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    return node


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write flat tensors + JSON-able ``meta`` atomically, with the digest in the header."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tensor_digest = _digest(clean)
    record = {"meta": meta, "sha256": tensor_digest, "digest_version": DIGEST_VERSION,
              "digest": _full_digest(meta, tensor_digest)}
    header = {_META_KEY: json.dumps(record, default=str)}
    atomic_write_bytes(path, st_save(clean, metadata=header))


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a file written by :func:`save_tensors`; raise :class:`CheckpointError` otherwise."""
    p = Path(path)
    check_regular_file(p)
    data = p.read_bytes()
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{p}: this is a pickle/torch.save file; DINOCell only loads safetensors files it can verify "
            "(pickles can run arbitrary code)"
        )
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, OverflowError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file (truncated or corrupted?): {exc}") from exc
    raw = (header.get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{p}: safetensors file without DINOCell metadata (not written by DINOCell)")
    info = _parse_info(p, raw)
    if _digest(tensors) != info.get("sha256"):
        raise CheckpointError(f"{p}: tensor data does not match its recorded sha256 digest (corrupted or tampered)")
    if _full_digest(info["meta"], info["sha256"]) != info.get("digest"):
        raise CheckpointError(f"{p}: metadata does not match its recorded digest (edited, corrupted or tampered); "
                              "use an unmodified copy of the file")
    return tensors, info["meta"]


def _parse_info(p: Path, raw: Any) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p}: DINOCell metadata is not valid JSON (corrupted or tampered): {exc}") from None
    if not isinstance(info, dict) or "meta" not in info:
        raise CheckpointError(f"{p}: DINOCell metadata lacks its 'meta' record (corrupted or tampered)")
    if info.get("digest_version") != DIGEST_VERSION or "digest" not in info:
        raise CheckpointError(f"{p}: written by an older DINOCell whose digest did not cover the metadata; "
                              "re-export or retrain it with this version (edits to its metadata cannot be detected)")
    return info


def check_regular_file(p: Path) -> None:
    """Refuse what is not a regular file before opening it: a FIFO named ``x.safetensors`` made a listing hang."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{p}: file does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{p}: not a regular file (a folder, FIFO or device); nothing was read from it")


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The safetensors header and the byte size the file must have (header + tensor data), without reading
    the tensors: listing a folder stays instant and a truncated file is still recognised."""
    p = Path(path)
    check_regular_file(p)
    try:
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 100_000_000:
                raise CheckpointError(f"{p}: not a safetensors file")
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p}: not a safetensors file")
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    return header, 8 + n + max(ends, default=0)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The DINOCell metadata from the header alone; a file shorter than its header says is refused (truncated)."""
    p = Path(path)
    header, size = read_header(p)
    raw = (header.get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{p}: safetensors file without DINOCell metadata (not written by DINOCell)")
    actual = p.stat().st_size
    if actual < size:
        raise CheckpointError(f"{p}: truncated ({actual} of {size} bytes; an interrupted copy or download?)")
    return _parse_info(p, raw)["meta"]


def read_state_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run config stored in a training-state checkpoint (the file is verified first)."""
    _, meta = load_tensors(path)
    items = (meta.get("skeleton") or {}).get("__dict__") or []
    config = next((_unflatten(v, {}) for k, v in items if k == "config"), None)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint holds no run config to check a resume against")
    return config


def save_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Save a nested training state (dicts/lists of tensors and JSON scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    save_tensors(path, tensors, {"format": FORMAT, "skeleton": skeleton})


def load_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a DINOCell training state (format {meta.get('format')!r})")
    device = torch.device(map_location)
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return _unflatten(meta["skeleton"], tensors)


_STEP_RE = re.compile(r"^step_(\d{8,})\.safetensors$")


class CheckpointManager:
    """``checkpoints/step_XXXXXXXX.safetensors``: keep the last N, plus every ``keep_every`` steps."""

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3, keep_every: int | None = None) -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last
        self.keep_every = keep_every

    def path_for(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.safetensors"

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _STEP_RE.match(p.name)))

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        path = self.path_for(step)
        save_state(path, state)
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: -self.keep_last]:
            if self.keep_every and step % self.keep_every == 0:
                continue
            self.path_for(step).unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """Newest checkpoint that verifies; a broken newest file (e.g. disk full) falls back to the previous."""
        for step in reversed(self.steps()):
            path = self.path_for(step)
            try:
                load_tensors(path)
            except CheckpointError as exc:
                log.warning("skipping unusable checkpoint: %s", exc)
                continue
            return path
        return None

    def resume_point(self) -> Path | None:
        """:meth:`latest` for a trainer about to resume: None only when there are no checkpoints at all. When files
        exist but none verifies, starting over would silently rewrite the run from step 0, so that is refused."""
        path = self.latest()
        if path is None and self.steps():
            problems = []
            for step in reversed(self.steps()[-3:]):
                try:
                    load_tensors(self.path_for(step))
                except CheckpointError as exc:
                    problems.append(str(exc))
            raise CheckpointError(f"{self.dir}: {len(self.steps())} checkpoint(s) but none is usable ("
                                  + "; ".join(problems) + "); move them away to start this run over")
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        path = self.latest()
        return None if path is None else load_state(path, map_location)


def resolve_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A run directory (→ its newest verified checkpoint) or a checkpoint file."""
    p = Path(source)
    if p.is_dir():
        ckpt = CheckpointManager(p / "checkpoints" if (p / "checkpoints").is_dir() else p).latest()
        if ckpt is None:
            raise CheckpointError(f"{p}: no usable checkpoint (no verified checkpoints/step_*.safetensors)")
        return ckpt
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    return p
