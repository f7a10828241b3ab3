"""Image-based profiling: well profiles from embeddings, and the CPJUMP1 copairs benchmark that scores them.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "EmbedSettings": "settings",
    "EvalSettings": "settings",
    "ProfileError": "table",
    "compare": "compare",
    "embed_profiles": "embed",
    "evaluate_profiles": "evaluate",
    "read_profiles": "table",
    "write_profiles": "table",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
