"""Profile tables on disk: CSV or Parquet, one row per well; ``Metadata_*`` columns are metadata, the rest features.

One reader and one writer so every profiling command accepts the same files and writes them atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_path

if TYPE_CHECKING:  # numpy and pandas load with the first table, so ProfileError and the settings stay light
    import numpy as np
    import pandas as pd

META_PREFIX = "Metadata_"
SUFFIXES = (".csv", ".csv.gz", ".parquet")


class ProfileError(DinocellError, ValueError):
    """A profile table or its metadata cannot be used as asked (names the file/column and what is wrong)."""


def _kind(path: str | os.PathLike[str]) -> str:
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ProfileError(f"{path}: unknown profile format; use one of {', '.join(SUFFIXES)}")


def read_profiles(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The table at ``path``; metadata columns are read as text so barcodes and wells stay exact."""
    import pandas as pd

    kind = _kind(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"profile table {path} not found")
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        else:
            head = pd.read_csv(path, nrows=0)
            meta = {c: str for c in head.columns if str(c).startswith(META_PREFIX)}
            df = pd.read_csv(path, dtype=meta, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: cannot read the profile table ({type(exc).__name__}: {exc})") from None
    if df.empty:
        raise ProfileError(f"{path}: the profile table has no rows")
    return df


def write_profiles(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    kind = _kind(path)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if kind == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if str(out).endswith(".gz") else None)
    return out


def split_columns(df: pd.DataFrame, source: str = "profiles") -> tuple[list[str], list[str]]:
    """(metadata columns, feature columns); every feature column must be numeric."""
    import pandas as pd

    meta = [c for c in df.columns if str(c).startswith(META_PREFIX)]
    feats = [c for c in df.columns if not str(c).startswith(META_PREFIX)]
    if not feats:
        raise ProfileError(f"{source}: no feature columns (every column starts with {META_PREFIX!r})")
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise ProfileError(f"{source}: feature columns must be numeric; not numeric: {bad[:5]}"
                           f"{' …' if len(bad) > 5 else ''} (metadata columns must start with {META_PREFIX!r})")
    return meta, feats


def feature_matrix(df: pd.DataFrame, features: list[str]) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(df[features].to_numpy(dtype=np.float64))


def info_path(table: str | os.PathLike[str]) -> Path:
    """``TABLE.json``: what ``profile embed`` recorded beside a table (settings, read-out, backbone, counts)."""
    return Path(f"{table}.json")


def table_readout(table: str | os.PathLike[str]) -> dict[str, object] | None:
    """The read-out a profile table holds, ``{"channels", "views", "tokens"}`` from ``TABLE.json`` (tables from
    before the ``readout`` record: from its settings); None when nothing beside the table says."""
    try:
        info = json.loads(info_path(table).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    readout = info.get("readout")
    if isinstance(readout, dict) and readout.get("channels"):
        return readout
    settings = info.get("settings")
    if isinstance(settings, dict) and settings.get("channels"):
        return {"channels": settings["channels"], "tokens": settings.get("tokens")}
    return None


def readout_text(table: str | os.PathLike[str]) -> str:
    """One line for a reader: ``each (Mito, AGP, RNA, ER, DNA) · cls``, or why it is not known."""
    r = table_readout(table)
    if r is None:
        return f"not recorded (no {info_path(table).name} from `profile embed` beside the table)"
    views = r.get("views")
    shown = f" ({', '.join(map(str, views))})" if isinstance(views, list) and len(views) > 1 else ""
    return f"{r['channels']}{shown}" + (f" · {r['tokens']}" if r.get("tokens") else "")
