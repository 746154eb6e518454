"""The shape of the code, checked: imports only point down the layers of docs/DESIGN.md and never
form a circle; every method file is registered; the README's method and measure tables are the
registries'; every preset value cites its source; no source file is over 400 lines."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from kedit.config import load_preset
from kedit.console import markdown_measures, markdown_methods
from kedit.eval.metric import GROUP_ORDER, METRICS
from kedit.methods import METHODS, EditMethod
from kedit.model.arch import ARCHS
from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "kedit"

#: docs/DESIGN.md's layers, bottom first: a module may import from its own layer or below
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "kedit._version",
        "kedit.types",
        "kedit.config",
        "kedit.registry",
        "kedit.env",
        "kedit.corpus",
        "kedit.formatting",
        "kedit.figures",
    ),
    ("kedit.model",),
    ("kedit.data",),
    ("kedit.methods",),
    ("kedit.train",),
    ("kedit.eval",),
    ("kedit.locate",),
    ("kedit.bench",),
    ("kedit.api",),
    (
        "kedit.console",
        "kedit.cli",
        "kedit.cli_common",
        "kedit.cli_eval",
        "kedit.cli_bench",
        "kedit.cli_trace",
        "kedit.cli_train",
    ),
)
#: the package itself (``import kedit``) re-exports the public verbs: the top
TOP = len(LAYERS)
#: method infrastructure in methods/: the contract, changes, the handle, sessions, the registry
METHOD_INFRASTRUCTURE = {"__init__", "base", "changes", "edit", "session", "registry"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == "kedit":
        return TOP
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to docs/DESIGN.md and LAYERS")


def imports_of(module: str) -> set[str]:
    """Every kedit module ``module`` imports, anywhere in the file (functions and
    ``TYPE_CHECKING`` blocks included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t == "kedit" or t.startswith("kedit.")}
    return {t for t in found if t in MODULES} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [t for t in GRAPH[module] if layer(t) > layer(module)]
    assert not upward, f"{module} (layer {layer(module)}) imports from above: {upward}"


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                circle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


def test_the_layer_check_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The two checks above, on a made-up package: they must be able to fail."""
    monkeypatch.setitem(GRAPH, "kedit.types", {"kedit.bench.store"})
    assert layer("kedit.bench.store") > layer("kedit.types")
    with pytest.raises(AssertionError, match="imports from above"):
        test_imports_point_down_the_layers("kedit.types")
    monkeypatch.setitem(GRAPH, "kedit.registry", {"kedit.config"})
    monkeypatch.setitem(GRAPH, "kedit.config", {"kedit.registry"})
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


# -- registrations ------------------------------------------------------------------------------


def method_files() -> list[str]:
    folder = PACKAGE / "methods"
    return sorted(
        p.stem
        for p in folder.glob("*.py")
        if not p.stem.startswith("_") and p.stem not in METHOD_INFRASTRUCTURE
    )


@pytest.mark.parametrize("stem", method_files())
def test_every_method_file_is_registered(stem):
    module = importlib.import_module(f"kedit.methods.{stem}")
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, EditMethod)
        and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]
    assert classes, f"methods/{stem}.py defines no EditMethod"
    for cls in classes:
        assert cls.name in METHODS, f"{cls.__name__} ({cls.name}) is not registered"
        assert METHODS[cls.name] is cls


def test_every_registered_method_lives_in_a_method_file():
    stems = set(method_files())
    for name in METHODS.names():
        module = METHODS[name].__module__
        assert module.rpartition(".")[2] in stems, f"{name} is defined in {module}"


def test_every_measure_has_a_known_group():
    for name in METRICS.names():
        assert METRICS[name].group in GROUP_ORDER, f"{name}: unknown group {METRICS[name].group}"


def readme_section(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker}:begin -->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
    assert found, f"README.md has no {marker} section (python scripts/sync_readme.py)"
    return found.group(1)


@pytest.mark.parametrize(
    ("marker", "table"), [("methods", markdown_methods), ("measures", markdown_measures)]
)
def test_readme_tables_are_the_registries(marker, table):
    assert readme_section(marker) == table(), (
        f"README.md's {marker} table is out of date: run python scripts/sync_readme.py"
    )


# -- presets ------------------------------------------------------------------------------------

PRESETS = sorted((PACKAGE / "presets").glob("*/*.yaml"))
VALUE_LINE = re.compile(r"^\s*[\w-]+:\s*\S")  # `key: value`, or `30: {...}` under by_num_layers


def preset_readers() -> dict[str, type[EditMethod]]:
    """Preset folder -> the config class of a method that reads it."""
    return {(METHODS[n].presets or n): METHODS[n] for n in METHODS.names()}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_presets_cite_a_source_for_every_value_and_fit_their_config(path):
    readers = preset_readers()
    assert path.parent.name in readers, f"{path}: no registered method reads presets/{path.parent}"
    model_type, _, name = path.stem.partition(".")  # <model_type>[.<name>].yaml
    assert model_type in ARCHS.names(), f"{path}: {model_type} is not a known model_type"
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        code = line.split("#", 1)[0]
        if VALUE_LINE.match(code) and not code.strip().endswith(":"):
            assert "#" in line, f"{path.name}:{number} gives no source: {line.strip()}"
    data = yaml.safe_load(path.read_text()) or {}
    config = readers[path.parent.name].config_cls
    for depth in [None, *(data.get("by_num_layers") or {})]:
        load_preset(path.parent.name, [model_type], depth, config, name or None)  # keys checked


def test_a_preset_exists_only_where_values_differ():
    """An architecture that shares its family's presets has no file of its own."""
    for path in PRESETS:
        family = ARCHS.get(path.stem.partition(".")[0]).preset_family
        if family is not None:
            sibling = path.with_name(path.name.replace(path.stem.partition(".")[0], family, 1))
            assert not sibling.exists() or sibling.read_text() != path.read_text(), path


# -- sizes --------------------------------------------------------------------------------------


def test_no_source_file_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"
