"""Per-field cost of the per-cell measurements: ``minimal`` (17 hand-written per object) vs ``full`` (CellProfiler's
by cp-measure) on a fixture-like field, cells + nuclei, the five fluorescent channels — what ``segment-plate``,
``jump label --measure`` and ``profile embed --backbone cellprofiler`` pay per field besides reading it.

    python benchmarks/measure.py                  # a 1080² field (CPJUMP1 fields are 1080²)
    python benchmarks/measure.py --size 512 --repeat 3

Prints the objects, the seconds per field of each set, the columns each writes, and where ``full``'s time goes
(cp-measure's groups, timed on the cells of the same field).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np

from dinocell_core.measure.cells import measure_cells
from dinocell_core.synthetic.fixture import make_field

CHANNELS = ("Mito", "AGP", "RNA", "ER", "DNA")  # ch1..ch5


def timed(fn, repeat: int) -> tuple[float, object]:
    """Best of ``repeat`` wall-clock seconds, and the last result."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def group_times(cells: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, float]:
    """Seconds per cp-measure group on one object kind (channel groups summed over channels, pairs over pairs)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core, corr = get_core_measurements(legacy=True), get_correlation_measurements()
    scaled = {ch: img.astype(np.float64) / 65535 for ch, img in images.items()}
    out: dict[str, float] = {}
    for name, fn in core.items():
        chans = [scaled["DNA"]] if name in ("sizeshape", "zernike", "feret") else list(scaled.values())
        t0 = time.perf_counter()
        for img in chans:
            fn(cells, img)
        out[name] = time.perf_counter() - t0
    for name, fn in corr.items():
        kw = {"scale_max": 65535} if name == "costes" else {}
        t0 = time.perf_counter()
        for a, b in itertools.combinations(scaled.values(), 2):
            fn(a, b, cells, **kw)
        out[f"correlation {name}"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1080, help="field side in px (CPJUMP1: 1080)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs per set")
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    ch, nuclei, cells = make_field(args.size, seed=args.seed)
    images = dict(zip(CHANNELS, ch[:5]))
    print(f"field {args.size}×{args.size}, {len(np.unique(cells)) - 1} cells, {len(np.unique(nuclei)) - 1} nuclei, "
          f"{len(images)} channels")
    measure_cells(cells[:64, :64], nuclei[:64, :64], {k: v[:64, :64] for k, v in images.items()}, "full")  # warm
    rows = []
    for features in ("minimal", "full"):
        sec, table = timed(lambda f=features: measure_cells(cells, nuclei, images, f), args.repeat)
        rows.append((features, sec, table.shape[1]))
    print(f"{'features':<10}{'s / field':>12}{'columns':>10}")
    for features, sec, ncol in rows:
        print(f"{features:<10}{sec:>12.2f}{ncol:>10}")
    print(f"full / minimal: {rows[1][1] / rows[0][1]:.0f}×")
    print("full on the cells, by cp-measure group (s):")
    for name, sec in sorted(group_times(cells, images).items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24}{sec:>8.2f}")


if __name__ == "__main__":
    main()
