import dataclasses
import json

import pytest
import torch

from models.core.checkpoints import load_checkpoint
from models.core.config import DDPMConfig, DiffusionConfig, TrainConfig, UNetConfig, VAEConfig
from models.kinds import KindError, kind_of
from models.training.experiment import Experiment
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
    from pathlib import Path

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
