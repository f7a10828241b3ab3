"""The package layout's rules: no import cycles (lazy imports included), torch-free config schemas, packaged recipes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from dinocell_core.config import RECIPES

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("dinocell_core", "napari_dinocell")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its body (function-level imports count too)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (SRC / pkg).rglob("*.py")}
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
