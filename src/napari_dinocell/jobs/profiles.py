"""The Profiles widget's work: read, normalise and benchmark well profiles, then project them to a 2-D map."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from napari_dinocell.jobs.runner import Progress

if TYPE_CHECKING:
    from dinocell_core.profiling.projection import WellMap


def well_map_job(profiles: str, evaluation: str | None, normalize: str, null_size: int, method: str
                 ) -> Generator[Progress, None, WellMap | None]:
    """The map of ``profiles`` (with ``evaluation``'s mAP results if given, else computed here)."""
    from dinocell_core.profiling.projection import WellMap, iter_well_map
    from dinocell_core.profiling.settings import EvalSettings

    settings = EvalSettings(normalize=normalize, null_size=null_size, matching=False)
    result = None
    for item in iter_well_map(profiles, evaluation or None, settings, method):
        if isinstance(item, WellMap):
            result = item
        else:
            yield Progress(item[0], item[1], item[2])
    return result
