"""The Segment dock's models folder scan: every bundle listed from its header at once, then each one verified in
full (tensor table, weights digest, finite weights: :func:`dinocell_core.seg.bundle.load_bundle`), so a truncated
or corrupt file is listed as unusable, with why, instead of vanishing from the list or looking like a good model.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dinocell_core.seg.bundle import BundleInfo


@dataclass
class ModelListing:
    """The bundles of a models folder; an unusable one has ``problem`` set. ``verified``: weights checked too (the
    first listing, from the headers alone, comes before that)."""

    folder: Path
    bundles: list[BundleInfo]
    verified: bool

    @property
    def usable(self) -> list[BundleInfo]:
        return [b for b in self.bundles if b.problem is None]

    @property
    def unusable(self) -> list[BundleInfo]:
        return [b for b in self.bundles if b.problem is not None]


def scan_models_job(folder: str) -> Generator[ModelListing, None, ModelListing]:
    """Yields the header listing (instant), returns it with every bundle's weights verified."""
    from dinocell_core.seg.bundle import list_bundles, load_bundle

    root = Path(folder).expanduser()
    infos = list_bundles(root, include_broken=True)
    yield ModelListing(root, list(infos), verified=False)
    checked = []
    for info in infos:
        if info.problem is None:
            try:
                load_bundle(info.path)  # read and dropped: only whether it loads matters here
            except Exception as exc:  # noqa: BLE001 (whatever stops it loading is the reason shown)
                info = replace(info, problem=str(exc) or type(exc).__name__)
        checked.append(info)
    return ModelListing(root, checked, verified=True)
