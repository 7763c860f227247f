import dataclasses
import gzip
import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.checkpoints import load_checkpoint
from models.core.config import DDPMConfig, DiffusionConfig, TrainConfig, UNetConfig, VAEConfig
from models.kinds import KindError, kind_of
from models.train import main
from models.training.experiment import Experiment
from models.training.sources import VALIDATION_FILE
from models.training.trainer import LOG_FILE, Trainer


def _images(n: int = 32, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def _train_config(steps: int = 6) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=4,
        learning_rate=1e-3,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
        ema_decay=0.9,
    )


def _experiments() -> dict[str, Experiment]:
    ddpm = DDPMConfig(
        UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            num_heads=1,
        ),
        DiffusionConfig(num_timesteps=50, variance="learned_range"),
    )
    vae = VAEConfig(latent_dim=4, channels=(8, 16), num_mixtures=2)
    return {
        "ddpm": Experiment("ddpm", ddpm, _train_config()),
        "vae": Experiment("vae", vae, _train_config()),
    }


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, kind):
    experiment = _experiments()[kind]
    straight = Trainer(experiment, tmp_path / "straight", torch.device("cpu"))
    (tmp_path / "straight").mkdir()
    straight.run(_images())

    (tmp_path / "split").mkdir()
    first = Trainer(experiment, tmp_path / "split", torch.device("cpu"))
    first.run(_images(), stop_after=3)
    resumed = Trainer(experiment, tmp_path / "split", torch.device("cpu"))
    assert resumed.try_resume() and resumed.step == 3
    resumed.run(_images())

    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    for name, tensor in straight.ema.state_dict().items():
        assert torch.equal(tensor, resumed.ema.state_dict()[name]), name
    log = [json.loads(line) for line in (tmp_path / "split" / LOG_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]


def test_ddpm_export_holds_the_ema_weights_and_loads_with_the_checkpoint_loader(tmp_path):
    experiment = _experiments()["ddpm"]
    trainer = Trainer(experiment, tmp_path, torch.device("cpu"))
    trainer.run(_images())
    loaded = load_checkpoint(tmp_path / "checkpoint")
    assert loaded.kind == "ddpm"
    for name, tensor in trainer.ema.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    differs = any(
        not torch.equal(trainer.model.state_dict()[n], t)
        for n, t in trainer.ema.state_dict().items()
    )
    assert differs  # the EMA really is a different set of weights
    training = json.loads((tmp_path / "checkpoint" / "training.json").read_text())
    assert training["steps_done"] == 6


def test_resume_refuses_a_run_directory_of_another_experiment(tmp_path):
    experiments = _experiments()
    Trainer(experiments["vae"], tmp_path, torch.device("cpu")).run(_images(), stop_after=3)
    other_train = dataclasses.replace(_train_config(), learning_rate=2e-3)
    other = Experiment("vae", experiments["vae"].model_config, other_train)
    with pytest.raises(SystemExit, match="different experiment"):
        Trainer(other, tmp_path, torch.device("cpu")).try_resume()


def test_a_run_extended_by_editing_its_step_count_follows_the_same_trajectory(tmp_path):
    experiment = _experiments()["vae"]
    straight = Trainer(experiment, tmp_path / "straight", torch.device("cpu"))
    (tmp_path / "straight").mkdir()
    straight.run(_images())  # 6 steps

    (tmp_path / "short").mkdir()
    short = Experiment("vae", experiment.model_config, _train_config(steps=3))
    Trainer(short, tmp_path / "short", torch.device("cpu")).run(_images())
    longer = Experiment("vae", experiment.model_config, _train_config(steps=9))
    resumed = Trainer(longer, tmp_path / "short", torch.device("cpu"))
    assert resumed.try_resume()
    resumed.run(_images(), stop_after=3)

    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_resume_drops_log_lines_written_after_the_last_saved_state(tmp_path):
    experiment = _experiments()["vae"]
    Trainer(experiment, tmp_path, torch.device("cpu")).run(_images(), stop_after=3)
    with (tmp_path / LOG_FILE).open("a") as log:  # a run killed at step 4, after logging it
        log.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    resumed = Trainer(experiment, tmp_path, torch.device("cpu"))
    assert resumed.try_resume()
    resumed.run(_images())
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5, 6]


def test_shipped_training_configs_parse():
    root = Path(__file__).resolve().parents[2] / "configs"
    for kind in ("vae", "ddpm"):
        for name in (f"{kind}_fmnist.json", f"{kind}_fmnist_large.json"):
            experiment = Experiment.from_file(kind, root / name)
            assert experiment.build_model() is not None


def test_a_time_limit_stops_at_a_logged_step_and_exports_it(tmp_path):
    experiment = _experiments()["vae"]
    trainer = Trainer(experiment, tmp_path, torch.device("cpu"))
    trainer.run(_images(), time_limit_s=0.0)  # already past the limit at the first log line
    assert trainer.step == 1
    training = json.loads((tmp_path / "checkpoint" / "training.json").read_text())
    assert training["steps_done"] == 1
    resumed = Trainer(experiment, tmp_path, torch.device("cpu"))
    assert resumed.try_resume() and resumed.step == 1


def test_float16_export_halves_the_weights_file(tmp_path):
    sizes = {}
    for dtype in ("float32", "float16"):
        train = dataclasses.replace(_train_config(steps=1), export_dtype=dtype)
        experiment = Experiment("ddpm", _experiments()["ddpm"].model_config, train)
        (tmp_path / dtype).mkdir()
        Trainer(experiment, tmp_path / dtype, torch.device("cpu")).run(_images())
        sizes[dtype] = (tmp_path / dtype / "checkpoint" / "model.safetensors").stat().st_size
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.55


def test_bf16_autocast_training_takes_finite_steps(tmp_path):
    train = dataclasses.replace(_train_config(steps=2), autocast_bf16=True)
    experiment = Experiment("ddpm", _experiments()["ddpm"].model_config, train)
    trainer = Trainer(experiment, tmp_path, torch.device("cpu"))
    before = {n: t.clone() for n, t in trainer.model.state_dict().items()}
    trainer.run(_images())
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert any(not torch.equal(before[n], t) for n, t in trainer.model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def _rgb16_experiments() -> dict[str, Experiment]:
    vae = VAEConfig(image_channels=3, image_size=16, latent_dim=4, channels=(8, 16))
    unet = UNetConfig(
        image_channels=3,
        image_size=16,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_heads=1,
    )
    ddpm = DDPMConfig(unet, DiffusionConfig(num_timesteps=10))
    train = _train_config(steps=3)
    return {"vae": Experiment("vae", vae, train), "ddpm": Experiment("ddpm", ddpm, train)}


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_an_rgb_16x16_model_trains_exports_and_reloads(tmp_path, kind):
    experiment = _rgb16_experiments()[kind]
    trainer = Trainer(experiment, tmp_path, torch.device("cpu"))
    trainer.run(_images(16, (3, 16, 16)))
    assert trainer.step == 3

    loaded = load_checkpoint(tmp_path / "checkpoint")
    assert loaded.kind == kind
    assert kind_of(loaded.model).image_shape(loaded.model.config) == (3, 16, 16)
    exported = trainer.ema if kind_of(kind).exports_ema else trainer.model
    for name, tensor in exported.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss, _ = kind_of(kind).training_loss(loaded.model, x, torch.Generator().manual_seed(2))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_training_refuses_images_of_another_shape_naming_both(tmp_path, kind):
    trainer = Trainer(_rgb16_experiments()[kind], tmp_path, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(1, 28, 28\)"):
        trainer.run(_images(8))
    assert trainer.step == 0 and not (tmp_path / LOG_FILE).exists()


def test_training_refuses_images_that_are_not_uint8(tmp_path):
    trainer = Trainer(_experiments()["vae"], tmp_path, torch.device("cpu"))
    with pytest.raises(ValueError, match="uint8"):
        trainer.run(_images().float())


def test_an_experiment_refuses_an_unknown_kind_or_another_kinds_config():
    experiments = _experiments()
    with pytest.raises(KindError, match="unknown model kind"):
        Experiment("gan", experiments["vae"].model_config, _train_config())
    with pytest.raises(TypeError, match="needs a DDPMConfig, got VAEConfig"):
        Experiment("ddpm", experiments["vae"].model_config, _train_config())


# The command line on a folder of images -----------------------------------------------------


def _square_pngs(folder: Path, n: int = 30, size: int = 16) -> Path:
    """``n`` RGB PNGs of a coloured square on a dark ground, in two subfolders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = np.full((size, size, 3), 20, np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 2, x : x + size // 2] = rng.integers(64, 256, 3)
        path = folder / f"part{i % 2}" / f"square{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return folder


def _cli_config(tmp_path: Path, steps: int = 4) -> Path:
    config = {
        "model": {"image_channels": 3, "image_size": 16, "latent_dim": 4, "channels": [8, 16]},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "log_every": 1,
        },
    }
    path = tmp_path / "vae.json"
    path.write_text(json.dumps(config))
    return path


def _train(config: Path, data: Path, out: Path, *extra: str) -> int:
    argv = ["vae", "--config", str(config), "--data", str(data), "--out", str(out)]
    return main([*argv, "--threads", "1", *extra])


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


def test_the_cli_trains_on_a_folder_holds_out_a_split_and_logs_its_loss(tmp_path):
    data, run = _square_pngs(tmp_path / "squares"), tmp_path / "run"
    assert _train(_cli_config(tmp_path), data, run, "--validation-fraction", "0.2") == 0

    held = (run / VALIDATION_FILE).read_text().splitlines()
    assert len(held) == 6 and all((data / name).is_file() for name in held)
    assert any(name.startswith("part1/") for name in held)  # recursive, relative to --data

    loaded = load_checkpoint(run / "checkpoint")
    assert kind_of(loaded.model).image_shape(loaded.model.config) == (3, 16, 16)
    training = json.loads((run / "checkpoint" / "training.json").read_text())
    assert training["steps_done"] == 4
    assert training["data"] == {
        "source": "folder",
        "folder": str(data.resolve()),
        "images": 30,
        "training_images": 24,
        "validation_images": 6,
        "validation_fraction": 0.2,
        "resized": False,
        "validation_file": str((run / VALIDATION_FILE).resolve()),
    }
    validated = [entry for entry in _log(run) if "validation_loss" in entry]
    assert [entry["step"] for entry in validated] == [2, 4]  # every saved step
    assert all(math.isfinite(entry["validation_loss"]) for entry in validated)


def test_the_validation_loss_is_that_of_the_held_out_images_under_fixed_noise(tmp_path):
    data, run = _square_pngs(tmp_path / "squares"), tmp_path / "run"
    _train(_cli_config(tmp_path, steps=2), data, run)
    held = [data / name for name in (run / VALIDATION_FILE).read_text().splitlines()]
    assert len(held) == 3  # the default fraction, 0.1 of 30
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in held])
    trainer = Trainer(
        Experiment.from_file("vae", _cli_config(tmp_path, 2)), run, torch.device("cpu")
    )
    assert trainer.try_resume()
    logged = _log(run)[-1]["validation_loss"]
    assert trainer.validation_loss(images) == pytest.approx(logged, rel=1e-5)
    assert trainer.validation_loss(images) == trainer.validation_loss(images)


def test_a_resumed_cli_run_keeps_its_split_and_matches_an_uninterrupted_one(tmp_path):
    data, config = _square_pngs(tmp_path / "squares"), _cli_config(tmp_path)
    _train(config, data, tmp_path / "straight")
    _train(config, data, tmp_path / "split", "--stop-after", "2")
    split = (tmp_path / "split" / VALIDATION_FILE).read_text()
    # A file added before resuming is trained on; the held-out list does not change.
    extra = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    extra.save(data / "part0" / "added.png")
    _train(config, data, tmp_path / "split")
    assert (tmp_path / "split" / VALIDATION_FILE).read_text() == split
    assert split == (tmp_path / "straight" / VALIDATION_FILE).read_text()  # seeded
    training = json.loads((tmp_path / "split" / "checkpoint" / "training.json").read_text())
    assert training["data"]["images"] == 31 and training["data"]["validation_images"] == 3
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "split")
    assert [e["step"] for e in resumed] == [e["step"] for e in straight] == [1, 2, 3, 4]
    # Bit-exact on CPU; on CUDA two processes' kernels may differ in the last bits (an H100
    # gave 6.4217677 vs 6.4217682), so there the same run agrees to float32 rounding.
    tolerance = 1e-6 if torch.cuda.is_available() else 0.0
    assert resumed[1]["validation_loss"] == pytest.approx(
        straight[1]["validation_loss"], rel=tolerance, abs=0.0
    )


def test_a_resumed_cli_run_refuses_other_data(tmp_path, capsys):
    data, config = _square_pngs(tmp_path / "squares"), _cli_config(tmp_path)
    _train(config, data, tmp_path / "run", "--stop-after", "2")
    with pytest.raises(SystemExit) as exited:
        _train(config, data, tmp_path / "run", "--validation-fraction", "0.3")
    assert exited.value.code == 2
    assert "started on other data" in capsys.readouterr().err


def test_a_wrong_size_folder_fails_naming_the_file_unless_resized(tmp_path, capsys):
    data, config = _square_pngs(tmp_path / "squares", n=8, size=20), _cli_config(tmp_path, 2)
    with pytest.raises(SystemExit) as exited:
        _train(config, data, tmp_path / "refused")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{data / 'part0' / 'square00.png'}: 20x20, expected 16x16" in err
    assert "Traceback" not in err and not (tmp_path / "refused" / "state.pt").exists()

    assert _train(config, data, tmp_path / "resized", "--resize") == 0
    training = json.loads((tmp_path / "resized" / "checkpoint" / "training.json").read_text())
    assert training["data"]["resized"] is True and training["steps_done"] == 2


def test_unreadable_files_are_a_clean_cli_error_naming_them(tmp_path, capsys):
    data = _square_pngs(tmp_path / "squares", n=4)
    (data / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "notes.jpg").write_text("a text file")
    with pytest.raises(SystemExit) as exited:
        _train(_cli_config(tmp_path), data, tmp_path / "run")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "2 of 6 files" in err and "broken.png" in err and "notes.jpg" in err
    assert "Traceback" not in err


def _fake_fashion_mnist(root: Path, n: int = 8) -> Path:
    """IDX files of ``n`` random 28x28 images where the Fashion-MNIST loader looks."""
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    for name, array in [
        ("train-images-idx3-ubyte", images),
        ("train-labels-idx1-ubyte", np.zeros(n)),
    ]:
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (root / f"{name}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return root


def test_fashion_mnist_stays_the_default_source_with_nothing_held_out(tmp_path):
    root, run = _fake_fashion_mnist(tmp_path / "idx"), tmp_path / "run"
    config = tmp_path / "fmnist.json"
    config.write_text(
        json.dumps(
            {
                "model": {"latent_dim": 4, "channels": [8, 16]},
                "train": {"steps": 1, "batch_size": 4},
            }
        )
    )
    assert main(["vae", "--config", str(config), "--out", str(run), "--data-root", str(root)]) == 0
    training = json.loads((run / "checkpoint" / "training.json").read_text())
    assert training["data"] == {
        "source": "fashion-mnist",
        "split": "train",
        "images": 8,
        "training_images": 8,
        "validation_images": 0,
    }
    assert not (run / VALIDATION_FILE).exists()
    assert all("validation_loss" not in entry for entry in _log(run))


def test_fashion_mnist_refuses_an_rgb_config_and_a_validation_fraction(tmp_path, capsys):
    root, config = _fake_fashion_mnist(tmp_path / "idx"), _cli_config(tmp_path)
    argv = ["vae", "--config", str(config), "--data-root", str(root)]
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "rgb")])
    assert "Fashion-MNIST images are (C, H, W) = (1, 28, 28)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                *argv,
                "--out",
                str(tmp_path / "r2"),
                "--data",
                "fashion-mnist",
                "--validation-fraction",
                "0.1",
            ]
        )
    assert "test split" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_a_run_started_from_a_checkpoint_begins_at_its_weights_and_records_it(tmp_path, kind):
    experiment = _experiments()[kind]
    (tmp_path / "source").mkdir()
    Trainer(experiment, tmp_path / "source", torch.device("cpu")).run(_images())
    source = tmp_path / "source" / "checkpoint"
    tuned = Trainer(experiment, tmp_path / "tuned", torch.device("cpu"))
    (tmp_path / "tuned").mkdir()
    tuned.start_from(source)
    exported = load_checkpoint(source).model.state_dict()
    for name, tensor in exported.items():
        assert torch.equal(tuned.model.state_dict()[name], tensor), name
        assert torch.equal(tuned.ema.state_dict()[name], tensor), name
    assert tuned.step == 0  # a new run: its own warm-up and step count

    tuned.run(_images(), stop_after=3)
    resumed = Trainer(experiment, tmp_path / "tuned", torch.device("cpu"))
    assert resumed.try_resume()
    resumed.run(_images())
    training = json.loads((tmp_path / "tuned" / "checkpoint" / "training.json").read_text())
    assert training["steps_done"] == 6
    assert training["started_from"] == {
        "directory": str(source),
        "weights_sha256": hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest(),
        "steps_done": 6,
    }


def test_starting_from_a_checkpoint_of_another_config_or_kind_names_what_differs(tmp_path):
    experiments = _experiments()
    (tmp_path / "vae").mkdir()
    Trainer(experiments["vae"], tmp_path / "vae", torch.device("cpu")).run(_images(), stop_after=1)
    source = tmp_path / "vae" / "checkpoint"
    wider = dataclasses.replace(
        experiments["vae"],
        model_config=dataclasses.replace(experiments["vae"].model_config, latent_dim=8),
    )
    with pytest.raises(ValueError, match="its model config differs .*latent_dim: 4 != 8"):
        Trainer(wider, tmp_path / "wider", torch.device("cpu")).start_from(source)
    with pytest.raises(ValueError, match="holds a vae; this run trains a ddpm"):
        Trainer(experiments["ddpm"], tmp_path / "ddpm", torch.device("cpu")).start_from(source)


def test_the_cli_fine_tunes_a_checkpoint_on_a_folder(tmp_path, capsys):
    data, config = _square_pngs(tmp_path / "squares"), _cli_config(tmp_path)
    assert _train(config, data, tmp_path / "base") == 0
    base = tmp_path / "base" / "checkpoint"
    assert _train(config, data, tmp_path / "tuned", "--start-from", str(base)) == 0
    assert "starting from the weights of" in capsys.readouterr().err
    training = json.loads((tmp_path / "tuned" / "checkpoint" / "training.json").read_text())
    assert training["started_from"]["directory"] == str(base)
    with pytest.raises(SystemExit):
        _train(config, data, tmp_path / "bad", "--start-from", str(tmp_path / "missing"))
    assert "--start-from:" in capsys.readouterr().err
