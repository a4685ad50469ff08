"""The shape of emit.retrieval: no import hidden in a function to dodge a circle (the circles
themselves: tests/test_import_graph.py), the names torch-free, the public face complete, and
every registry entry implemented."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import emit.retrieval as retrieval
from emit.retrieval.encoders.names import TEXT_ENCODERS
from emit.retrieval.losses.registry import LOSSES, get_loss

SRC = Path(__file__).resolve().parents[2] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in (SRC / "emit").rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The emit module a dotted import name lands in (a module, or the module defining the name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool]]:
    """(emit module imported, whether inside a function) for every import statement of
    ``module``: module level, inside functions and under ``if TYPE_CHECKING:`` alike."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.append((target, id(node) in nested))
    return found


# Imports inside a function that are no patched-over circle: the worker processes of an index
# build from feature shards (emit.retrieval.ondisk) load the model, and with it torch (~700 MB
# a process), only when the run has one to apply.
LAZY_FOR_MEMORY = {("emit.retrieval.ondisk", "emit.retrieval.model"),
                   ("emit.retrieval.ondisk", "emit.retrieval.hubness")}


def test_retrieval_imports_its_own_modules_at_the_top_only() -> None:
    hidden = {(m, t) for m in MODULES if m.startswith("emit.retrieval")
              for t, inside in _imports(m) if inside and t.startswith(("emit.retrieval", "emit.plots"))}
    assert hidden - LAZY_FOR_MEMORY == set()
    # the package face loads lazily: no module imports it back
    assert all(t != "emit.retrieval" for m in MODULES for t, _ in _imports(m))


def test_names_and_settings_need_no_torch() -> None:
    code = ("import sys\n"
            "import emit.retrieval.config, emit.retrieval.encoders.names, emit.retrieval.losses.registry\n"
            "from emit.retrieval.config import RetrievalConfig\n"
            "RetrievalConfig(encoder='minilm', loss='patr').validate().metric\n"
            "sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("name", retrieval.__all__)
def test_the_public_face_names_its_homes(name: str) -> None:
    value = getattr(retrieval, name)
    home = sys.modules[retrieval._EXPORTS[name]]
    assert getattr(home, name) is value


def test_the_type_stub_lists_the_same_names() -> None:
    stub = ast.parse((SRC / "emit" / "retrieval" / "__init__.pyi").read_text(encoding="utf-8"))
    imported = {(node.module, a.name)
                for node in stub.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert imported == {(module, name) for name, module in retrieval._EXPORTS.items()}


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_module_defines_the_convention(name: str) -> None:
    assert callable(get_loss(name).function)


@pytest.mark.parametrize("name", list(TEXT_ENCODERS))
def test_every_text_encoder_module_exists(name: str) -> None:
    assert TEXT_ENCODERS[name].module in MODULES
