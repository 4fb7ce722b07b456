"""The package's architecture, kept by a test: folders by kind of code, imports that run one way, no private reach.

An AST walk reads every import of every module of ednerf_ns - module-level, function-local and TYPE_CHECKING ones,
since a lazy import is a dependency too - and checks:

- no import cycle between ednerf_ns modules;
- no import from a higher layer (ednerf_ns/__init__.py gives the map): base (errors, timeline) < ops < accel <
  models2d < the nerfstudio glue at the top level < tools < demo < bench;
- no `_private` name taken from another ednerf_ns module (import or attribute);
- ops/ imports no nerfstudio, diffusers, transformers and nothing of ednerf_ns; models2d/ no nerfstudio; accel/ no
  diffusers or transformers;
- the package's __init__ imports nothing (`ns-train` imports every plugin) and every folder says its job;
- every name taken from an ednerf_ns module (`from ednerf_ns.x import a`, `x.a` on an imported module, lazy ones
  included) exists there, so a stale import left by a move fails here rather than in the one code path that runs it;
- the classes a saved config.yml names (its yaml tags) are exactly the pinned glue classes, and each resolves.

The checks are plain functions over a graph, and `test_the_checks_can_fail` runs them on a small broken graph.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ednerf_ns"

# Layers, lowest first: a module may import its own layer or a lower one.
LAYERS = ("base", "ops", "accel", "models2d", "glue", "tools", "demo", "bench")
BASE = ("errors", "timeline")  # standard library only (nerfstudio lazily, to print): every layer may use them
FOLDERS = ("ops", "accel", "models2d", "tools", "demo", "bench")
FORBIDDEN = {  # folder -> top-level packages it must never import (not even lazily)
    "ops": ("nerfstudio", "diffusers", "transformers", "ednerf_ns"),
    "accel": ("diffusers", "transformers"),
    "models2d": ("nerfstudio",),
}
# What saved config.yml files name (yaml tags of the method configs): these paths never move.
PINNED = {
    "ednerf_ns.trainer.EdNerfTrainerConfig",
    "ednerf_ns.trainer.EdNerfTrainer",
    "ednerf_ns.trainer.EdNerfEditTrainerConfig",
    "ednerf_ns.trainer.EdNerfEditTrainer",
    "ednerf_ns.pipeline.EdNerfPipelineConfig",
    "ednerf_ns.pipeline.EdNerfPipeline",
    "ednerf_ns.edit_pipeline.EdNerfEditPipelineConfig",
    "ednerf_ns.edit_pipeline.EdNerfEditPipeline",
    "ednerf_ns.model.EdNerfModelConfig",
    "ednerf_ns.model.EdNerfModel",
    "ednerf_ns.edit_model.EdNerfEditModelConfig",
    "ednerf_ns.edit_model.EdNerfEditModel",
    "ednerf_ns.datamanager.LatentDatamanagerConfig",
    "ednerf_ns.datamanager.LatentDatamanager",
}


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)
    """Every module imported (top-level package names for outside code, full names for ednerf_ns)."""
    edges: set[str] = field(default_factory=set)
    """The ednerf_ns modules imported."""
    private: list[str] = field(default_factory=list)
    """`_private` names reached in other ednerf_ns modules, as 'module._name (line)'."""
    names: list[tuple[str, str, int]] = field(default_factory=list)
    """Names taken from ednerf_ns modules (import or attribute), as (module, name, line)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_package() -> dict[str, Module]:
    modules = {module_name(p): Module(module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))}
    for module in modules.values():
        read_imports(module, modules)
    return modules


def read_imports(module: Module, modules: dict[str, Module], source: str | None = None) -> None:
    """Fill in `module`'s imports, edges and private reaches from its file (or `source`)."""
    tree = ast.parse(module.path.read_text() if source is None else source, filename=str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name -> ednerf_ns module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(module, alias.name, modules)
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:  # `from package import module`
                    add(module, full, modules)
                    aliases[alias.asname or alias.name] = full
                else:
                    add(module, base, modules)
                    if base.split(".")[0] == "ednerf_ns":
                        module.names.append((base, alias.name, node.lineno))
                        if is_private(alias.name) and base != module.name:
                            module.private.append(f"{base}.{alias.name} (line {node.lineno})")
    for node in ast.walk(tree):  # module._name, where `module` is an imported ednerf_ns module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            target = aliases[node.value.id]
            module.names.append((target, node.attr, node.lineno))
            if is_private(node.attr) and target != module.name:
                module.private.append(f"{target}.{node.attr} (line {node.lineno})")


def add(module: Module, name: str, modules: dict[str, Module]) -> None:
    if name.split(".")[0] != "ednerf_ns":
        module.imports.add(name.split(".")[0])
        return
    module.imports.add(name)
    while name not in modules and "." in name:  # `from ednerf_ns.x.y import Name`: the module is ednerf_ns.x.y
        name = name.rpartition(".")[0]
    if name != module.name:
        module.edges.add(name)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return -1  # the package itself: imports nothing
    if parts[1] in BASE:
        return 0
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return LAYERS.index("glue")  # a module at the top level


# ---------------------------------------------------------------------------------------------------- the checks
def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module from a higher layer."""
    return [
        f"{a} ({LAYERS[layer(a)] if layer(a) >= 0 else 'package'}) imports {b} ({LAYERS[layer(b)]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer(b) > layer(a)
    ]


def forbidden(modules: dict[str, Module]) -> list[str]:
    """Imports a folder must never make (FORBIDDEN), lazily or not."""
    out = []
    for module in modules.values():
        folder = module.name.split(".")[1] if "." in module.name else ""
        for banned in FORBIDDEN.get(folder, ()):
            for name in sorted(module.imports):
                if name.split(".")[0] == banned:
                    out.append(f"{module.name} imports {name}")
    return out


def defined_names(source: str) -> set[str] | None:
    """The names a module defines at its top level (inside if/try/with/for too); None if it has `__getattr__`."""
    names: set[str] = set()

    def targets(node: ast.AST) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    targets(target)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets(node.target)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets(node.target)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars)
            for block in ("body", "orelse", "finalbody"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                visit(handler.body)

    visit(ast.parse(source).body)
    return None if "__getattr__" in names else names


def missing_names(modules: dict[str, Module], sources: dict[str, str]) -> list[str]:
    """Names taken from an ednerf_ns module that it does not define (and that are not its submodules)."""
    defined = {name: defined_names(source) for name, source in sources.items()}
    out = []
    for module in modules.values():
        for target, name, line in module.names:
            if target not in modules:
                out.append(f"{module.name} (line {line}): no module {target}")
                continue
            known = defined.get(target)
            if known is not None and name not in known and f"{target}.{name}" not in modules:
                out.append(f"{module.name} (line {line}): {target} has no {name}")
    return out


# ---------------------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return read_package()


def test_no_import_cycle(modules):
    assert cycles({m.name: m.edges for m in modules.values()}) == []


def test_imports_run_downwards(modules):
    assert upward({m.name: m.edges for m in modules.values()}) == []


def test_no_private_name_from_another_module(modules):
    assert [f"{m.name}: {p}" for m in modules.values() for p in m.private] == []


def test_folders_import_only_what_their_job_allows(modules):
    assert forbidden(modules) == []


def test_every_imported_name_exists(modules):
    sources = {m.name: m.path.read_text() for m in modules.values()}
    assert missing_names(modules, sources) == []


def test_every_folder_says_its_job_and_the_package_imports_nothing(modules):
    top = ast.parse((PACKAGE / "__init__.py").read_text())
    assert ast.get_docstring(top) and all(isinstance(n, ast.Expr) for n in top.body), "docstring only"
    for folder in FOLDERS:
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder
    for module in modules.values():
        if module.path.parent != PACKAGE and module.path.name != "__init__.py":
            assert (module.path.parent / "__init__.py").is_file(), module.name
    assert set(modules["ednerf_ns"].edges) == set(), "ednerf_ns/__init__.py imports nothing"


def test_the_checks_can_fail():
    """The checks on a small broken graph: a cycle, an upward import, a banned import and a private name."""
    graph = {
        "ednerf_ns.ops.a": {"ednerf_ns.ops.b"},
        "ednerf_ns.ops.b": {"ednerf_ns.ops.a"},
        "ednerf_ns.errors": {"ednerf_ns.tools.runs"},
        "ednerf_ns.tools.runs": {"ednerf_ns.errors"},
        "ednerf_ns.model": {"ednerf_ns.ops.a"},
    }
    assert cycles(graph) == [["ednerf_ns.errors", "ednerf_ns.tools.runs"], ["ednerf_ns.ops.a", "ednerf_ns.ops.b"]]
    assert upward(graph) == ["ednerf_ns.errors (base) imports ednerf_ns.tools.runs (tools)"]
    assert cycles({"x": {"x"}}) == [["x"]] and cycles({"x": {"y"}, "y": set()}) == []
    fake = {
        "ednerf_ns.ops.a": Module("ednerf_ns.ops.a", Path("a.py"), imports={"torch", "nerfstudio", "ednerf_ns.errors"}),
        "ednerf_ns.models2d.b": Module("ednerf_ns.models2d.b", Path("b.py"), imports={"diffusers", "nerfstudio"}),
        "ednerf_ns.model": Module("ednerf_ns.model", Path("m.py"), imports={"nerfstudio", "diffusers"}),
    }
    assert forbidden(fake) == [
        "ednerf_ns.ops.a imports nerfstudio",
        "ednerf_ns.ops.a imports ednerf_ns.errors",
        "ednerf_ns.models2d.b imports nerfstudio",
    ]
    source = (
        "import ednerf_ns.tools.runs as r\n\n"
        "def f():\n    from ednerf_ns.models2d.diffusion import _quiet\n    r._reset()\n"
    )
    probe = Module("ednerf_ns.bench.probe", PACKAGE / "bench" / "probe.py")
    known = {name: Module(name, Path(name)) for name in ("ednerf_ns.tools.runs", "ednerf_ns.models2d.diffusion")}
    read_imports(probe, known, source)
    assert probe.edges == {"ednerf_ns.tools.runs", "ednerf_ns.models2d.diffusion"}
    assert probe.private == ["ednerf_ns.models2d.diffusion._quiet (line 4)", "ednerf_ns.tools.runs._reset (line 5)"]
    # a stale name (moved away), a stale module, and names that do exist in several top-level forms
    stale = Module("ednerf_ns.bench.stale", Path("stale.py"))
    known = {name: Module(name, Path(name)) for name in ("ednerf_ns.ops", "ednerf_ns.ops.a", "ednerf_ns.bench.stale")}
    source = "\n".join(
        [
            "import ednerf_ns.ops.a as a",
            "",
            "def f():",
            "    from ednerf_ns.ops.a import (",
            "        kept,",
            "        gone,",
            "    )",
            "    from ednerf_ns.ops import a, b",
            "    from ednerf_ns.ops.moved import c",
            "    return a.also_gone, a.CONST, a.maybe",
        ]
    )
    read_imports(stale, known, source)
    defines = "import os\nfrom x import kept\nCONST: int = 1\ntry:\n    maybe = 1\nexcept ImportError:\n    maybe = 0\n"
    sources = {"ednerf_ns.ops.a": defines, "ednerf_ns.ops": ""}
    assert missing_names(known | {"ednerf_ns.bench.stale": stale}, sources) == [
        "ednerf_ns.bench.stale (line 4): ednerf_ns.ops.a has no gone",
        "ednerf_ns.bench.stale (line 8): ednerf_ns.ops has no b",
        "ednerf_ns.bench.stale (line 9): no module ednerf_ns.ops.moved",
        "ednerf_ns.bench.stale (line 10): ednerf_ns.ops.a has no also_gone",
    ]


# ---------------------------------------------------------------------------------------------------- config.yml
@pytest.mark.parametrize("method", ["ed_nerf", "ed_nerf_edit"])
def test_saved_configs_name_only_the_pinned_classes(method):
    import importlib

    import yaml

    from ednerf_ns import configs

    text = yaml.dump(getattr(configs, method).config)
    tags = set(re.findall(r"!!python/(?:object|name):(ednerf_ns\.[\w.]+)", text))
    if method == "ed_nerf":
        expected = {n for n in PINNED if "Edit" not in n}
    else:  # the edit stage's classes, plus the datamanager both stages share
        expected = {n for n in PINNED if "Edit" in n or "datamanager" in n}
    assert tags == expected
    for name in tags:
        module, _, attr = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attr), type), name
    loaded = yaml.load(text, Loader=yaml.Loader)
    assert type(loaded).__module__ == "ednerf_ns.trainer"
