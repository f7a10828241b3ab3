"""Loaded segmentation models kept between Segment clicks.

Reading a bundle and building its ViT costs 0.2–0.3 s on CPU (more for ViT-S on a cold disk), which on a 384²
field is a quarter of the network pass: paid on every click it made the button 1.5–1.9× slower than the model.
The dock loads the chosen model in a worker as soon as it is picked (:func:`preload_job`) and every Segment click
reuses it. A model is keyed by its file's identity (path, size, mtime) and the device, so a retrained or replaced
bundle is read again; at most :data:`CAPACITY` models stay loaded (one per channel of a field), least recently used
dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from dinocell_core.seg.bundle import Bundle
    from dinocell_core.seg.inference import Segmenter

#: loaded models kept (5 fluorescent channels' decoders of one field)
CAPACITY = 5

_Key = tuple[str, int, int, str]


class ModelCache:
    """A thread-safe LRU of (bundle without its weight arrays, built network) by file identity and device."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, tuple[Bundle, torch.nn.Module]] = OrderedDict()

    @staticmethod
    def _key(path: Path, device: str) -> _Key:
        from dinocell_core.device import resolve_device
        from dinocell_core.seg.bundle import BundleError

        try:
            stat = path.stat()
        except OSError as exc:
            raise BundleError(f"{path}: file does not exist" if isinstance(exc, FileNotFoundError)
                              else f"{path}: cannot read it ({exc.strerror})") from None
        return str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(resolve_device(device))

    def model(self, path: Path, device: str) -> tuple[Bundle, torch.nn.Module]:
        """The bundle at ``path`` and its network on ``device``, loaded once. Loading happens outside the lock (a
        second caller for the same file may load it too; the first stored copy wins)."""
        from dinocell_core.seg.bundle import load_bundle

        key = self._key(path, device)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        bundle = load_bundle(path)
        network = bundle.build_model(key[3])
        entry = (replace(bundle, state_dict={}), network)  # the weights live in the network only
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)  # a job still running it keeps its own reference
        return entry

    def segmenter(self, path: Path, device: str, tile_size: int | None, channel: int | None) -> Segmenter:
        from dinocell_core.seg.inference import Segmenter

        bundle, network = self.model(path, device)
        return Segmenter(bundle, device=device, tile_size=tile_size, channel=channel, model=network)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


#: the plugin's one cache (all Segment docks of a session share the loaded models)
MODELS = ModelCache()


def preload_job(path: Path, device: str) -> None:
    """Load ``path``'s network on ``device`` into :data:`MODELS` (the dock runs this when a model is picked)."""
    MODELS.model(path, device)
