"""Synthetic data with known answers: CPJUMP1 plates (images, labels, plate maps) and planted profiles.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "make_field": "fixture",
    "make_jump_fixture": "fixture",
    "phenotype_of": "fixture",
    "planted_profiles": "profiles",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
