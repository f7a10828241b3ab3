"""The package layout's rules: folder layers (function-level imports included), no import cycles, torch-free config
schemas, packaged recipes."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dinocell_core.config import RECIPES
from tests.helpers import REPO

SRC = REPO / "src"
PACKAGES = ("dinocell_core", "napari_dinocell")

_CORE_BASE = {"dinocell_core", "dinocell_core.errors", "dinocell_core.io", "dinocell_core.config",
              "dinocell_core.schedules", "dinocell_core.device"}
#: The folder layers, bottom to top (``dinocell_core`` itself is the package root: its version and the lazy-export
#: helper every subpackage ``__init__`` uses): a folder (or top-level module) may import only the units listed for it.
#: A new folder must be added here; an import that runs back up (a lower folder importing a higher one) fails.
LAYERS: dict[str, set[str]] = {
    "dinocell_core": set(),
    "dinocell_core.errors": set(),
    "dinocell_core.schedules": set(),
    "dinocell_core.io": {"dinocell_core", "dinocell_core.errors"},
    "dinocell_core.config": {"dinocell_core.errors", "dinocell_core.io"},
    "dinocell_core.device": {"dinocell_core.config", "dinocell_core.errors"},
    "dinocell_core.jump": {"dinocell_core", "dinocell_core.errors", "dinocell_core.io"},
    "dinocell_core.backbones": {"dinocell_core", "dinocell_core.errors", "dinocell_core.io"},
    "dinocell_core.runs": _CORE_BASE,
    "dinocell_core.measure": {"dinocell_core", "dinocell_core.errors", "dinocell_core.io"},
    "dinocell_core.labels": _CORE_BASE | {"dinocell_core.jump", "dinocell_core.measure"},
    "dinocell_core.seg": _CORE_BASE | {"dinocell_core.jump", "dinocell_core.backbones", "dinocell_core.runs",
                                       "dinocell_core.labels", "dinocell_core.measure"},
    "dinocell_core.profiling": _CORE_BASE | {"dinocell_core.jump", "dinocell_core.backbones",
                                             "dinocell_core.labels", "dinocell_core.measure"},
    "dinocell_core.ssl": _CORE_BASE | {"dinocell_core.jump", "dinocell_core.backbones", "dinocell_core.runs",
                                       "dinocell_core.profiling"},
    "dinocell_core.synthetic": _CORE_BASE | {"dinocell_core.jump", "dinocell_core.labels"},
}
_CORE = set(LAYERS)
LAYERS |= {
    "dinocell_core.commands": _CORE,
    "dinocell_core.cli": {"dinocell_core.commands"},
    # the plugin: shared pieces, then background jobs, then widgets (views) on top
    "napari_dinocell": _CORE,
    "napari_dinocell.jobs": _CORE | {"napari_dinocell"},
    "napari_dinocell.widgets": _CORE | {"napari_dinocell", "napari_dinocell.jobs"},
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to: ``dinocell_core.seg.train`` → ``dinocell_core.seg``;
    the plugin's ``jobs/`` and ``widgets/`` are layers of their own above its other modules."""
    parts = module.split(".")
    if parts[0] == "napari_dinocell":
        return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in ("jobs", "widgets") else "napari_dinocell"
    return ".".join(parts[:2])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that the LAYERS table does not allow, as ``module -> module (layer -> layer)``."""
    bad = []
    for mod, deps in sorted(graph.items()):
        here = layer_of(mod)
        if here not in LAYERS:
            bad.append(f"{mod}: its folder {here} has no row in LAYERS")
            continue
        for dep in sorted(deps):
            there = layer_of(dep)
            if there != here and there not in LAYERS[here]:
                bad.append(f"{mod} -> {dep} ({here} -> {there})")
    return bad


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its body (function-level imports count too)."""
    files = {module_name(p, src): p for pkg in PACKAGES for p in (src / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in files:
                    deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files)
        deps.discard(mod)
        # importing a.b.c runs a/__init__ and a/b/__init__ too; those are empty here, so edges to them carry nothing
        graph[mod] = {d for d in deps if files[d].name != "__init__.py" or files[d].read_text().strip()}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    assert "dinocell_core.ssl.trainer" in graph and "dinocell_core.seg.inference" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_folders_import_only_the_layers_below_them() -> None:
    graph = import_graph()
    assert layer_violations(graph) == []


def test_layer_rule_catches_a_planted_back_arrow(tmp_path) -> None:
    """A copy of the tree with one function-level import running back up (jump → seg) must fail the rule."""
    shutil.copytree(SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    planted = tmp_path / "src" / "dinocell_core" / "jump" / "channels.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted() -> None:\n"
                       "    from dinocell_core.seg.inference import Segmenter  # noqa: F401\n")
    assert layer_violations(import_graph(tmp_path / "src")) == [
        "dinocell_core.jump.channels -> dinocell_core.seg.inference (dinocell_core.jump -> dinocell_core.seg)"]


def test_layers_table_is_acyclic() -> None:
    table = {a: {b for b in deps if b != a} for a, deps in LAYERS.items()}
    assert find_cycle(table) is None


def test_find_cycle_sees_a_lazy_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_schemas_import_neither_torch_nor_timm() -> None:
    code = ("import sys, dinocell_core.ssl.config, dinocell_core.seg.config, dinocell_core.jump.channels; "
            "print(sorted(m for m in ('torch', 'timm', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_napari_forms_import_neither_torch_nor_timm() -> None:
    """Opening the Pretrain / Train decoder forms reads their schemas only; the heavy stack loads when a job runs."""
    code = ("import sys, napari_dinocell.widgets.pretrain, napari_dinocell.widgets.train_decoder; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_recipes_live_inside_the_package() -> None:
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert {"pretrain_demo.yaml", "pretrain_vits8_jump.yaml", "decoder_demo.yaml"} <= set(names)
    assert RECIPES.is_relative_to(SRC / "dinocell_core")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", *args], capture_output=True, text=True)


def test_cli_turns_checkpoint_errors_into_one_line(tmp_path) -> None:
    """Every DinocellError (here CheckpointError) is one message naming the file and exit 1, never a traceback."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    empty = tmp_path / "run"
    empty.mkdir()
    for source, says in ((bad, "not a readable safetensors file"), (empty, "no usable checkpoint")):
        proc = run_cli("export-backbone", str(source), "-o", str(tmp_path / "out"))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr and str(source) in proc.stderr
