"""DINOv3 self-supervised pretraining: config, multi-crop data, heads, losses, the trainer, export.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "PretrainConfig": "config",
    "TrainingEvaluator": "evaluation",
    "export_backbone": "export",
    "run_pretraining": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
