"""The architecture, checked on the source: the kind registry is the only place that knows
what a VAE or a DDPM is, kinds arrive by entry point (no module imports one by name), and
models/ and offline/ never import the serving stack."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where kind-specific code belongs: the registry and the kinds' own packages.
KIND_HOMES = ("models/kinds.py", "models/vae/", "models/diffusion/")
KIND_NAMES = {"vae", "ddpm"}
KIND_CLASSES = {"VAE", "DDPM"}


def _kind_branches(source: str) -> list[str]:
    """Comparisons with a kind's name and isinstance checks against a kind's network class."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                if isinstance(operand, ast.Constant) and operand.value in KIND_NAMES:
                    found.append(f"line {node.lineno}: compares with {operand.value!r}")
                if isinstance(operand, ast.Set | ast.Tuple | ast.List) and any(
                    isinstance(e, ast.Constant) and e.value in KIND_NAMES for e in operand.elts
                ):
                    found.append(f"line {node.lineno}: tests membership in kind names")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if names & KIND_CLASSES:
                found.append(f"line {node.lineno}: {node.func.id}(..., {sorted(names)})")
    return found


def test_the_kind_branch_scan_finds_each_kind_of_branch():
    source = (
        "if kind == 'vae': pass\n"
        "if 'ddpm' != card['kind']: pass\n"
        "if kind in ('vae', 'x'): pass\n"
        "if isinstance(model, VAE): pass\n"
        "if isinstance(model, (ddpm.DDPM, int)): pass\n"
        "if kind == other and isinstance(model, FashionClassifier): pass\n"
    )
    assert len(_kind_branches(source)) == 5


def _python_files(*packages: str) -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for package in packages
        for path in (ROOT / package).rglob("*.py")
    )


DISPATCHING = [
    path
    for path in _python_files("models", "service", "offline")
    if not path.startswith(KIND_HOMES)
]


@pytest.mark.parametrize("path", DISPATCHING)
def test_only_the_registry_and_the_kind_modules_branch_on_the_kind(path):
    """Training, evaluation, checkpoints, the service and offline scoring dispatch through
    models.kinds."""
    assert _kind_branches((ROOT / path).read_text()) == []


# The kinds pyproject.toml declares (group elbo_serve.kinds): name -> "module:Class".
KIND_ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
    "elbo_serve.kinds"
]


def test_the_built_in_kinds_are_declared_as_entry_points():
    assert set(KIND_NAMES) <= set(KIND_ENTRY_POINTS)


def _imports_by_name(source: str, entry_point: str) -> list[str]:
    """Where ``source`` imports the kind that ``entry_point`` ("module:Class") names: the
    class from its module, the module itself, or the module's name as a string (a dynamic
    import)."""
    module, cls = entry_point.split(":")
    parent, _, last = module.rpartition(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if node.module == module and cls in names:
                found.append(f"line {node.lineno}: from {module} import {cls}")
            if node.module == parent and last in names:
                found.append(f"line {node.lineno}: from {parent} import {last}")
        if isinstance(node, ast.Import) and any(a.name == module for a in node.names):
            found.append(f"line {node.lineno}: import {module}")
        if isinstance(node, ast.Constant) and node.value in (module, entry_point):
            found.append(f"line {node.lineno}: names {node.value!r}")
    return found


def test_the_import_scan_finds_each_way_of_importing_a_kind():
    source = (
        "from models.vae.kind import VAEKind\n"
        "from models.vae import kind\n"
        "import models.vae.kind\n"
        "importlib.import_module('models.vae.kind')\n"
        "from models.vae.kind import IWAE_K_RANGE\n"  # not the kind: allowed
        "from models.vae.model import VAE\n"
    )
    assert len(_imports_by_name(source, "models.vae.kind:VAEKind")) == 4


@pytest.mark.parametrize("path", _python_files("models", "service", "offline"))
def test_no_module_imports_a_kind_by_name(path):
    """The registry (models/kinds.py) finds kinds by entry point and every other module asks
    it; only a kind's own module names its class."""
    source = (ROOT / path).read_text()
    for entry_point in KIND_ENTRY_POINTS.values():
        module = entry_point.split(":")[0]
        if path != module.replace(".", "/") + ".py":
            assert _imports_by_name(source, entry_point) == [], entry_point


SERVING_STACK = ("bentoml", "pydantic", "prometheus_client", "service")


def _imported_packages(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return {name.split(".")[0] for name in imported}


@pytest.mark.parametrize("path", _python_files("models", "offline"))
def test_models_and_offline_scoring_never_import_the_serving_stack(path):
    """Models run anywhere; Spark executors run offline/ with no BentoML installed."""
    assert not _imported_packages(path) & set(SERVING_STACK)


# Installed by the dev extra only: the image and `pip install .` lack them.
DEV_ONLY = {"scipy", "sklearn", "pytest", "fastapi", "schemathesis", "kubernetes_validate"}


@pytest.mark.parametrize("path", _python_files("service"))
def test_the_service_imports_no_dev_only_package(path):
    """A served feature that needs one fails in the image (models' scoring path: see
    tests/models/test_typicality.py)."""
    assert not _imported_packages(path) & DEV_ONLY
