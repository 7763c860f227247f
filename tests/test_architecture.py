"""The architecture, checked on the source: the kind registry is the only place that knows
what a VAE or a DDPM is, and models/ and offline/ never import the serving stack."""

from __future__ import annotations

import ast
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
