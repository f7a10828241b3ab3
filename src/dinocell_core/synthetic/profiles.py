"""Planted well profiles with known answers: for tests, benchmarks and the napari widget's demo.

Each perturbation shifts its wells along its own direction by a known strength (0 = no phenotype); two
perturbations that share a target share the direction. Plates add their own offset and gain, so a normalisation
that ignores plates is visibly worse. Columns follow CPJUMP1's compound profiles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dinocell_core.jump.index import well_name


def planted_profiles(plates: int = 4, perturbations: int = 12, negcon_per_plate: int = 16, features: int = 32,
                     strengths: tuple[float, ...] = (3.0, 3.0, 0.0, 1.5, 1.5, 0.0), noise: float = 1.0,
                     seed: int = 0) -> pd.DataFrame:
    """One well per perturbation per plate plus ``negcon_per_plate`` DMSO wells; ``strengths`` cycle over
    perturbations. Perturbations 2k and 2k+1 share a target and a direction."""
    rng = np.random.default_rng(seed)
    n_dirs = (perturbations + 1) // 2
    dirs = rng.standard_normal((n_dirs, features))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs *= np.sqrt(features)
    rows: list[dict[str, object]] = []
    mats: list[np.ndarray] = []
    for p in range(plates):
        offset = rng.normal(0, 3, features)
        gain = rng.uniform(0.5, 2.0, features)
        slots = [None] * negcon_per_plate + list(range(perturbations))
        order = rng.permutation(len(slots))
        for w, i in enumerate(order):
            k = slots[i]
            effect = 0.0 if k is None else strengths[k % len(strengths)] * dirs[k // 2] / 2
            x = rng.normal(0, noise, features) + effect
            mats.append(offset + gain * x)
            rows.append({
                "Metadata_Plate": f"BR{117100 + p:08d}", "Metadata_Well": well_name(w // 24 + 1, w % 24 + 1),
                "Metadata_broad_sample": None if k is None else f"BRD-K{10000000 + k:08d}-001-01-1",
                "Metadata_control_type": "negcon" if k is None else "",
                "Metadata_pert_iname": "DMSO" if k is None else f"compound-{k}",
                "Metadata_target_list": "" if k is None else f"GENE{k // 2}|SHARED{k // 2}",
                "Metadata_modality": "compound",
                "Metadata_strength": 0.0 if k is None else strengths[k % len(strengths)],
            })
    x = np.vstack(mats)
    feats = pd.DataFrame(x, columns=[f"f{j:03d}" for j in range(features)])
    return pd.concat([pd.DataFrame(rows), feats], axis=1)
