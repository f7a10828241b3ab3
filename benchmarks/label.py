"""`jump label` throughput: fields/s per core on 1080×1080 fields, and where the time goes in one field.

    python benchmarks/label.py                  # 8 fields of 1080², 1 worker, then all cores
    python benchmarks/label.py --fields 16 --workers 4

Builds (once, under --work) a synthetic CPJUMP1 plate of 1080² fields in both fixture phenotypes, then runs the
whole `jump label` path (index, read DNA + RNA LZW TIFFs, illumination, the CPJUMP1 CellProfiler segmentation,
three LZW mask writes — nuclei, cells, cytoplasm — and qc) in one process with OpenCV limited to one thread — the
per-core figure — and with ``--workers`` processes.
Goal: ≥ 2 fields/s/core (one 3,456-field plate in under 15 min on 16 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

from dinocell_core.io.tiffio import read_tiff
from dinocell_core.jump.index import index_fields
from dinocell_core.labels import cellprofiler as cp
from dinocell_core.labels.run import _illum, label_tree
from dinocell_core.synthetic.fixture import make_jump_fixture


def steps(root: Path) -> dict[str, float]:
    """Median ms per pipeline step over the fields of ``root`` (one core)."""
    fields = index_fields(root, channels=(3, 5)).fields
    p = cp.CellProfilerParams()
    times: dict[str, list[float]] = {}

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        times.setdefault(name, []).append((t1 - t0) * 1000)
        return t1

    for f in fields:
        t = time.perf_counter()  # wall time per step (inflated on a busy machine; compare with the CPU-s below)
        dna, rna = read_tiff(f.path(root, 5)), read_tiff(f.path(root, 3))
        ill_d, ill_r = _illum(str(root), f, 5, dna.shape), _illum(str(root), f, 3, rna.shape)
        t = tick("read 2 TIFFs + illum", t)
        d, r = cp.correct_illumination(dna, ill_d), cp.correct_illumination(rna, ill_r)
        t = tick("illumination divide", t)
        corr = cp.subtract_background(d, p.bg_block_size, p.bg_smoothing)
        t = tick("DNA background (block min + Gaussian 21 px)", t)
        th = cp.mce_threshold(corr, p.nuclei_correction, p.nuclei_bounds)
        binary = cp.smoothed_at_least(corr, p.nuclei_smoothing_scale / 0.6744 / 2, th)
        t = tick("nuclei threshold (Li) + smoothing", t)
        unedited = cp.declump_shape(binary, p.maxima_distance)
        t = tick("shape declumping (EDT, maxima, watershed)", t)
        nuclei, _ = cp.filter_nuclei(unedited, p.min_diameter, p.max_diameter)
        t = tick("border + size filters", t)
        cells, _ = cp.identify_cells(r, unedited, nuclei, p)
        t = tick("cells (Li, watershed on RNA, holes, filter)", t)
        cp.cytoplasm(cells, nuclei)
        tick("cytoplasm (cells minus nucleus interiors)", t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dinocell_bench_label")
    ap.add_argument("--fields", type=int, default=8, help="fields to label (2 sites per well)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    wells = max(1, args.fields // 2)
    tree = args.work / f"tree_{wells}"
    if not tree.exists():
        make_jump_fixture(tree, plates=1, wells=wells, sites=2, size=1080, seed=0, edge_cases=False)
    n = len(index_fields(tree, channels=(3, 5)).fields)
    print(f"{n} fields of 1080×1080 under {tree}")
    for name, ms in steps(tree).items():
        print(f"  {name:<46} {ms:7.1f} ms")
    for workers in sorted({1, args.workers}):
        out = args.work / f"labels_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = label_tree(tree, out, workers=workers, qc_fields=0)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rate = summary.labelled / dt
        line = (f"jump label, {workers} worker(s): {summary.labelled} fields in {dt:.2f} s = {rate:.2f} fields/s "
                f"= {rate / workers:.2f} fields/s/core (goal ≥ 2)")
        if workers == 1:  # on a shared machine wall time includes other jobs' share; CPU time does not
            line += f"; {cpu:.2f} CPU-s = {summary.labelled / cpu:.2f} fields per CPU-second"
        print(line)


if __name__ == "__main__":
    main()
