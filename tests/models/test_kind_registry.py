"""The kind registry reads entry points (group elbo_serve.kinds), ours included; a plug-in that
fails to import or declares an unsupported interface version is refused with its reason, and
only its own checkpoints are affected."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kind_plugins import (
    REFUSED,
    kinds_on_path,
    with_kind,
    write_distribution,
    write_refused_plugins,
)

import models.kinds
from models.core.checkpoints import UnavailableKindCheckpointError, read_config
from models.core.repository import servable_checkpoints
from models.kinds import (
    SUPPORTED_INTERFACE_VERSIONS,
    UnavailableKindError,
    architectures,
    kind_of,
    refused_kinds,
    reload_kinds,
)

BUNDLED_VAE = Path(__file__).resolve().parents[2] / "checkpoints" / "vae"


@pytest.fixture
def refused_plugins(tmp_path):
    with kinds_on_path(write_refused_plugins(tmp_path / "site")):
        yield tmp_path


def test_the_built_in_kinds_are_entry_points_of_this_distribution():
    assert {"vae", "ddpm", "classifier"} <= set(architectures())
    assert refused_kinds() == {}
    assert kind_of("vae").interface_version in SUPPORTED_INTERFACE_VERSIONS


def test_without_installed_metadata_the_built_ins_come_from_pyproject(monkeypatch):
    """A source tree run without `pip install -e .` (and the container image, which copies the
    source) finds the built-ins in the pyproject.toml beside models/."""
    monkeypatch.setattr(models.kinds, "entry_points", lambda group: [])
    reload_kinds()
    try:
        assert {"vae", "ddpm", "classifier"} <= set(architectures())
    finally:
        monkeypatch.undo()
        reload_kinds()


def test_a_kind_declaring_an_unsupported_interface_version_is_refused_by_name(refused_plugins):
    reason = refused_kinds()["future"]
    for part in ("FutureKind", "interface version 99", "refused-kinds 0.1", "refused_future:"):
        assert part in reason, reason
    assert str(sorted(SUPPORTED_INTERFACE_VERSIONS)) in reason
    with pytest.raises(UnavailableKindError, match="'future' is installed but refused"):
        kind_of("future")
    assert kind_of("vae").name == "vae"  # the others are untouched


def test_a_kind_whose_module_fails_to_import_is_refused_with_the_error(refused_plugins):
    reason = refused_kinds()["broken"]
    assert "ImportError: needs libfoo" in reason and "refused_broken:BrokenKind" in reason
    assert set(refused_kinds()) == set(REFUSED)


def test_a_kind_that_declares_no_interface_version_is_refused(refused_plugins):
    """No default: a kind written for another interface is never taken for this one."""
    assert "UnversionedKind" in refused_kinds()["unversioned"]
    assert "declares no interface_version" in refused_kinds()["unversioned"]


def test_a_repository_serves_the_other_models_and_logs_the_refused_ones(refused_plugins, caplog):
    root = refused_plugins / "models"
    root.mkdir()
    with_kind(BUNDLED_VAE, root / "vae", "vae")
    for kind in REFUSED:
        with_kind(BUNDLED_VAE, root / f"of-{kind}", kind)
    with pytest.raises(UnavailableKindCheckpointError, match="'future' is not available"):
        read_config(root / "of-future")
    with caplog.at_level(logging.ERROR, logger="elbo_serve"):
        assert list(servable_checkpoints(root)) == ["vae"]
    logged = caplog.text
    assert "not serving of-broken" in logged and "needs libfoo" in logged
    assert "not serving of-future" in logged and "interface version 99" in logged


def test_training_a_refused_kind_says_why(refused_plugins, capsys):
    from models.train import main

    config = refused_plugins / "config.json"
    config.write_text("{}")
    with pytest.raises(SystemExit):
        main(["future", "--config", str(config), "--out", str(refused_plugins / "run")])
    assert "declares interface version 99" in capsys.readouterr().err


def test_a_plug_in_cannot_take_a_built_in_kinds_name(tmp_path, caplog):
    site = tmp_path / "site"
    site.mkdir()
    (site / "shadow_kind.py").write_text(
        "from models.vae.kind import VAEKind\n\n\n"
        "class ShadowKind(VAEKind):\n    interface_version = 1\n    name = 'vae'\n"
    )
    write_distribution(site, "aaa-shadow", {"vae": "shadow_kind:ShadowKind"})
    with caplog.at_level(logging.WARNING, logger="elbo_serve"), kinds_on_path(site):
        assert type(kind_of("vae")).__name__ == "VAEKind"
    assert "'vae = shadow_kind:ShadowKind' (aaa-shadow 0.1) ignored" in caplog.text
