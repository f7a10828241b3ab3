"""Every ``profile embed|evaluate|compare`` and ``jump label`` option either sets a field of its settings model,
with that model's default (the one home of each default), or is listed as a run option (files, output, workers)."""

from __future__ import annotations

import argparse

from dinocell_core.commands import build_parser
from dinocell_core.commands.labels import LABEL_RUN_OPTIONS
from dinocell_core.commands.profile import RUN_OPTIONS
from dinocell_core.labels.settings import CellProfilerParams, LabelSettings
from dinocell_core.profiling.settings import EmbedSettings, EvalSettings


def _sub(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_cli_defaults_are_the_models_defaults():
    parser = build_parser()
    label_fields = {**LabelSettings.model_fields, "illumination": CellProfilerParams.model_fields["illumination"]}
    cases = [(("profile", "embed"), EmbedSettings.model_fields, RUN_OPTIONS),
             (("profile", "evaluate"), EvalSettings.model_fields, RUN_OPTIONS),
             (("profile", "compare"), EvalSettings.model_fields, RUN_OPTIONS),
             (("jump", "label"), label_fields, LABEL_RUN_OPTIONS)]
    checked = 0
    for path, fields, run_options in cases:
        for action in _sub(parser, *path)._actions:
            if action.dest in fields:
                assert action.default == fields[action.dest].default, (path, action.dest)
                checked += 1
            else:
                assert action.dest in run_options, f"{' '.join(path)} {action.option_strings}: no settings field"
    assert checked == 22 + 2 * 12 + 4
