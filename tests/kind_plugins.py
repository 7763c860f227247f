"""Model kinds from other packages, for the tests: the example plug-in (examples/categorical_vae)
installed into a directory as pip installs it, and two plug-ins the registry must refuse (one
whose module fails to import, one declaring an interface version we do not support).

Entry points are read from the ``*.dist-info`` directories on ``sys.path``; a test puts the
directory on ``sys.path`` (:func:`kinds_on_path`) or on a server's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "categorical_vae"
EXAMPLE_KIND = "categorical_vae"
# Kind name -> (module source, class); the module is a plug-in's whole package.
REFUSED = {
    "broken": ('raise ImportError("needs libfoo, which is not installed")\n', "BrokenKind"),
    "future": (
        "from models.vae.kind import VAEKind\n\n\n"
        "class FutureKind(VAEKind):\n    interface_version = 99\n    name = 'future'\n",
        "FutureKind",
    ),
    "unversioned": (
        "from models.kinds import Architecture\n\n\n"
        "class UnversionedKind(Architecture):\n    name = 'unversioned'\n",
        "UnversionedKind",
    ),
}


def install_example(target: Path) -> Path:
    """``pip install --no-deps --target target`` of the example plug-in, from a copy of its
    source (pip builds in the source tree), without touching this environment."""
    source = target.parent / f"{target.name}-source"
    shutil.copytree(EXAMPLE, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def write_refused_plugins(target: Path) -> Path:
    """A distribution "refused-kinds" in ``target`` declaring the kinds of :data:`REFUSED`."""
    target.mkdir(parents=True, exist_ok=True)
    for name, (source, _cls) in REFUSED.items():
        (target / f"refused_{name}.py").write_text(source)
    points = {name: f"refused_{name}:{cls}" for name, (_source, cls) in REFUSED.items()}
    return write_distribution(target, "refused-kinds", points)


def write_distribution(target: Path, name: str, points: dict[str, str]) -> Path:
    """The metadata of a distribution ``name`` 0.1 in ``target`` that declares the kinds
    ``points`` (kind name -> "module:Class"), as pip would install it."""
    dist = target / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = ["[elbo_serve.kinds]", *(f"{kind} = {value}" for kind, value in points.items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return target


def with_kind(checkpoint: Path, copy: Path, kind: str) -> Path:
    """A copy of a VAE checkpoint whose config.json names ``kind``."""
    shutil.copytree(checkpoint, copy)
    header = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**header, "kind": kind}))
    return copy


@contextmanager
def kinds_on_path(*directories: Path) -> Iterator[None]:
    """The registry as it is with ``directories`` on sys.path, rebuilt before and after."""
    import importlib

    from models.kinds import reload_kinds

    sys.path[:0] = [str(d) for d in directories]
    importlib.invalidate_caches()
    reload_kinds()
    try:
        yield
    finally:
        for directory in directories:
            sys.path.remove(str(directory))
        importlib.invalidate_caches()
        reload_kinds()
