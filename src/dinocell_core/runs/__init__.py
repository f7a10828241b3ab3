"""The run directory (config, metrics, status, checkpoints), its metric families, launching, stopping, torchrun.

Main names are importable from here (loaded on first use, so light modules stay light)."""

from dinocell_core import lazy_exports

_EXPORTS = {
    "RunDir": "rundir",
    "StopRequest": "stopping",
    "launch_local": "launch",
    "list_runs": "rundir",
    "read_metrics": "rundir",
    "resume_run": "launch",
    "run_info": "rundir",
    "stop_run": "launch",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
