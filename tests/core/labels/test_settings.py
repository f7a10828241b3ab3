"""``jump label``'s settings models: strict keys named in one-line errors, ``--param key=value`` parsing."""

from __future__ import annotations

import pickle

import pytest

from dinocell_core.labels.run import label_tree
from dinocell_core.labels.settings import (
    CellProfilerParams,
    LabelSettings,
    LabelSettingsError,
    parse_params,
)


@pytest.mark.parametrize("model", [CellProfilerParams, LabelSettings])
def test_an_unknown_key_is_an_error_naming_it(model):
    with pytest.raises(LabelSettingsError, match=r"unknown setting 'bogus' \(settings: "):
        model(bogus=1)
    with pytest.raises(LabelSettingsError, match="unknown setting 'params.bogus'"):
        LabelSettings(params={"bogus": 1})


def test_param_overrides_parse_like_the_command_line():
    p = parse_params(["min_diameter=8", "cells_bounds=0.005,0.025", "nuclei_bounds=[0.01, 1]", "illumination=no",
                      "bg_block_size=20"])
    assert p == CellProfilerParams(min_diameter=8.0, cells_bounds=(0.005, 0.025), nuclei_bounds=(0.01, 1.0),
                                   illumination=False, bg_block_size=20)
    assert p.as_dict()["cells_bounds"] == (0.005, 0.025) and pickle.loads(pickle.dumps(p)) == p  # spawn workers
    for items, says in [(["bogus=1"], "--param: unknown setting 'bogus'"), (["x"], "--param 'x': use key=value"),
                        (["min_diameter=abc"], "--param: min_diameter: Input should be a valid number"),
                        (["cells_bounds=0.3,0.1"], "cells_bounds: need two values low,high with low ≤ high"),
                        (["cells_bounds=a,b"], "cells_bounds: need two values low,high")]:
        with pytest.raises(LabelSettingsError, match=says):
            parse_params(items)
    with pytest.raises(LabelSettingsError, match="frozen"):
        p.min_diameter = 3.0  # type: ignore[misc]


def test_label_tree_checks_its_settings(tmp_path):
    with pytest.raises(LabelSettingsError, match="unknown labelling method 'magic'; use one of cellprofiler, import"):
        label_tree(tmp_path / "tree", tmp_path / "out", method="magic")
    assert LabelSettings().method == "cellprofiler" and LabelSettings().qc_fields == 12
