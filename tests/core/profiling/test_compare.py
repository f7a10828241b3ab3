"""``profile compare``: evaluate folders and raw tables side by side in one table and one plot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("copairs")

from dinocell_core.profiling.compare import compare  # noqa: E402
from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles  # noqa: E402
from dinocell_core.profiling.report import write_evaluation  # noqa: E402
from dinocell_core.profiling.table import ProfileError  # noqa: E402
from dinocell_core.synthetic.profiles import planted_profiles  # noqa: E402


def test_compare_folders_and_tables(tmp_path: Path):
    s = EvalSettings(null_size=500)
    strong = planted_profiles(seed=0)
    write_evaluation(evaluate_profiles(strong, s), tmp_path / "strong_eval")
    weak = planted_profiles(seed=0, strengths=(0.5, 0.0))
    weak.to_csv(tmp_path / "weak.csv", index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", "compare", str(tmp_path / "strong_eval"),
                        str(tmp_path / "weak.csv"), "-o", str(tmp_path / "cmp"), "--null-size", "500", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert list(table.columns) == ["backbone", "task", "fraction_retrieved", "mean_map", "n_groups"]
    rr = table[table["task"] == "replicate_retrieval"].set_index("backbone")
    assert set(rr.index) == {"strong_eval", "weak"}
    assert rr.loc["strong_eval", "mean_map"] > rr.loc["weak", "mean_map"]
    assert (tmp_path / "cmp" / "weak" / "summary.json").is_file()  # the table was evaluated and kept
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "replicate_retrieval" in r.stdout


def test_compare_errors(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="summary.json"):
        compare([tmp_path / "empty"], tmp_path / "o")
    with pytest.raises(ProfileError, match="labels"):
        compare([tmp_path / "a", tmp_path / "b"], tmp_path / "o", labels=["x"])
