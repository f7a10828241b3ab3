"""Several backbones side by side: fraction retrieved and mean mAP per task, as one table and one plot.

Inputs are ``profile evaluate`` output folders (their ``summary.json``) or profile tables, which are evaluated here
with one set of settings so every row is scored the same way.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dinocell_core.io.fsutil import atomic_write_bytes
from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles
from dinocell_core.profiling.report import SUMMARY, write_evaluation
from dinocell_core.profiling.table import SUFFIXES, ProfileError, read_profiles

COLUMNS = ("backbone", "task", "fraction_retrieved", "mean_map", "n_groups")


def _label(path: Path) -> str:
    name = path.name
    for suf in SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def load_summary(source: str | os.PathLike[str], settings: EvalSettings, workdir: Path, label: str) -> dict:
    p = Path(source)
    if p.is_dir():
        s = p / SUMMARY
        if not s.is_file():
            raise ProfileError(f"{p}: no {SUMMARY} (not a `profile evaluate` output folder)")
        return json.loads(s.read_text())
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found (give evaluate output folders or profile tables)")
    ev = evaluate_profiles(read_profiles(p), settings, source=str(p))
    write_evaluation(ev, workdir / label)
    return ev.summary()


def comparison_table(summaries: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for label, summary in summaries.items():
        for task, v in summary.items():
            if isinstance(v, dict) and "fraction_retrieved" in v:
                n = v.get("n_perturbations", v.get("n_groups"))
                rows.append((label, task, v["fraction_retrieved"], v["mean_map"], n))
    if not rows:
        raise ProfileError("no task results in the given summaries")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_comparison(table: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(table["task"]))
    labels = list(dict.fromkeys(table["backbone"]))
    fig = Figure(figsize=(max(6.0, 1.6 * len(tasks) * max(1, len(labels)) / 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(labels)
    for ax, metric, title in zip(axes, ("fraction_retrieved", "mean_map"), ("fraction retrieved", "mean mAP")):
        for j, lab in enumerate(labels):
            sub = table[table["backbone"] == lab].set_index("task")
            ys = [float(sub[metric].get(t, float("nan"))) for t in tasks]
            ax.bar([i + j * width for i in range(len(tasks))], ys, width=width, label=lab)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], [t.replace("_", "\n") for t in tasks],
                      fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def compare(sources: Sequence[str | os.PathLike[str]], outdir: str | os.PathLike[str],
            labels: Sequence[str] | None = None, settings: EvalSettings | None = None) -> pd.DataFrame:
    if labels and len(labels) != len(sources):
        raise ProfileError(f"{len(labels)} labels for {len(sources)} inputs")
    names = list(labels) if labels else [_label(Path(s)) for s in sources]
    if len(set(names)) != len(names):
        raise ProfileError(f"inputs need distinct labels, got {names}; pass --labels")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or EvalSettings()
    summaries = {n: load_summary(s, settings, out, n) for n, s in zip(names, sources)}
    table = comparison_table(summaries)
    atomic_write_bytes(out / "comparison.csv", table.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(out / "comparison.png", plot_comparison(table))
    return table
