"""Files of one ``profile evaluate``: a CSV per task, ``summary.json`` and a PNG of the mAP distributions."""

from __future__ import annotations

import io
import os
from pathlib import Path

from dinocell_core.io.fsutil import atomic_write_bytes, atomic_write_json
from dinocell_core.profiling.evaluate import Evaluation

SUMMARY = "summary.json"
PLOT = "map_distributions.png"


def task_csv(name: str) -> str:
    return f"{name}.csv"


def plot_map_distributions(ev: Evaluation) -> bytes:
    """One panel per task: histogram of per-group mAP, retrieved (q < threshold) groups in colour."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    tasks = list(ev.tasks.values())
    fig = Figure(figsize=(4.2 * len(tasks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    bins = [i / 20 for i in range(21)]
    for ax, t in zip(axes, tasks):
        hit = t.table["below_corrected_p"]
        m = t.table["mean_average_precision"]
        ax.hist([m[hit], m[~hit]], bins=bins, stacked=True, color=["tab:blue", "tab:gray"],
                label=[f"q < {ev.settings.threshold:g} ({int(hit.sum())})", f"not retrieved ({int((~hit).sum())})"])
        s = t.summary
        ax.set_title(f"{t.name}\nfraction retrieved {s['fraction_retrieved']:.3f} · mean mAP {s['mean_map']:.3f}",
                     fontsize=9)
        ax.set_xlabel("mAP")
        ax.set_ylabel("groups")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_evaluation(ev: Evaluation, outdir: str | os.PathLike[str]) -> list[Path]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, t in ev.tasks.items():
        p = out / task_csv(name)
        atomic_write_bytes(p, t.table.to_csv(index=False).encode("utf-8"))
        written.append(p)
    atomic_write_json(out / SUMMARY, ev.summary())
    written.append(out / SUMMARY)
    atomic_write_bytes(out / PLOT, plot_map_distributions(ev))
    written.append(out / PLOT)
    return written
