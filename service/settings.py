"""One settings object for the service, read from ``ELBO_SERVE_*`` environment variables.

Defaults serve the committed checkpoints from the repository root, on CUDA when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.nn.acceleration import Acceleration
    from service.tasks.store import StoreConfig
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "ELBO_SERVE_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _flag(name: str, default: bool) -> bool:
    text = _env(name, "true" if default else "false").strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"{ENV_PREFIX}{name} must be true or false, got {text!r}")
    return text in ("true", "1")


CHANNELS_LAST_VALUES = ("auto", "true", "false")


def _choice(name: str, default: str, values: tuple[str, ...]) -> str:
    text = _env(name, default).strip().lower()
    text = {"1": "true", "0": "false"}.get(text, text)
    if text not in values:
        raise ValueError(f"{ENV_PREFIX}{name} must be one of {', '.join(values)}, got {text!r}")
    return text


def _positive_int(name: str, default: int) -> int:
    text = _env(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV_PREFIX}{name} must be a positive integer, got {text!r}")
    return value


def _positive_float(name: str, default: float) -> float:
    text = _env(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{ENV_PREFIX}{name} must be a positive number, got {text!r}")
    return value


def _task_store(text: str) -> str:
    text = text.strip()
    if text and not text.startswith("redis://"):
        raise ValueError(
            f"{ENV_PREFIX}TASK_STORE must be empty (SQLite under {ENV_PREFIX}TASK_DIR) or "
            f"redis://HOST:PORT/DB, got {text!r}"
        )
    return text


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Ceiling(NamedTuple):
    gflop: float  # 0: none
    variable: str  # the environment variable that sets it


def read_api_keys(inline: str, file: str) -> tuple[str, ...]:
    """Keys from a comma-separated string and from a file of one key per line ('#' comments)."""
    keys = [key.strip() for key in inline.split(",")]
    if file:
        lines = Path(file).read_text().splitlines()
        keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return tuple(key for key in keys if key)


def read_named_paths(text: str, variable: str) -> tuple[tuple[str, Path], ...]:
    """'name=path,name=path' -> ((name, path), ...); a ValueError names the bad entry."""
    pairs = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, separator, path = entry.partition("=")
        if not separator or not name.strip() or not path.strip():
            raise ValueError(f"{variable}: expected name=path entries, got {entry!r}")
        pairs.append((name.strip(), Path(path.strip())))
    return tuple(pairs)


def _legacy_checkpoints() -> tuple[tuple[str, Path], ...]:
    """ELBO_SERVE_VAE_CHECKPOINT / ELBO_SERVE_DDPM_CHECKPOINT, from before the repository."""
    return tuple(
        (name, Path(os.environ[ENV_PREFIX + variable]))
        for name, variable in (("vae", "VAE_CHECKPOINT"), ("ddpm", "DDPM_CHECKPOINT"))
        if os.environ.get(ENV_PREFIX + variable)
    )


@dataclass(frozen=True)
class Settings:
    # The model repository: every servable checkpoint directory in it is served under the
    # directory's name (models/core/repository.py); the bundled ones are 'vae' and 'ddpm'.
    model_dir: Path = field(default_factory=lambda: REPO_ROOT / "checkpoints")
    # More models, or other directories for names in the repository: (name, directory).
    # ELBO_SERVE_MODELS=name=dir,...; the older ELBO_SERVE_VAE_CHECKPOINT and
    # ELBO_SERVE_DDPM_CHECKPOINT still work, as the directories of 'vae' and 'ddpm'.
    extra_models: tuple[tuple[str, Path], ...] = ()
    # "auto" picks CUDA when available, else CPU.
    device: str = "auto"
    # Most images one batched model call carries, per device kind (CPU memory and latency
    # stay modest; a GPU amortises much larger batches).
    cpu_max_batch_images: int = 64
    cuda_max_batch_images: int = 512
    # Images are drawn and decoded in network calls of exactly this many rows, so a seed gives
    # byte-identical images alone or batched (CPU kernels pick algorithms by batch size; see
    # models/nn/batch_invariance.py). 0 turns it off: faster for lone requests, not reproducible.
    # On a GPU, where a call of one row costs about as much as one of dozens, the chunk is
    # larger so that a batch of requests still shares few calls.
    image_chunk_rows: int = 4
    cuda_image_chunk_rows: int = 64
    # Likelihood bounds (IWAE samples, DDPM timesteps) make network calls of about this many
    # rows (at least one per image), and a long bound hands its model lane to cheaper waiting
    # work between calls: fewer rows, shorter waits. On this project's CPU 16-row calls run
    # within 5% of the throughput of 64-row ones (VAE decoder and UNet, one thread each).
    # Step-batched calls (step_batching) carry at most as many rows, for the same reason.
    bound_call_rows: int = 16
    cuda_bound_call_rows: int = 512
    # How long the first request of a batch waits for companions. Requests that arrive while
    # the model is busy join the next batch anyway, so this only matters at low load.
    batch_wait_ms: float = 10.0
    # False: every request runs alone (no wait, one request per model call). For measuring
    # the batching gain; serving unbatched only wastes throughput.
    batching: bool = True
    # True: sampling, encoding and decoding of kinds with step-level loops run in one
    # denoising loop per model lane, every network call carrying the rows of all running
    # requests at their own steps; requests join and leave between steps
    # (service/stepping.py, docs/step_batching.md). False: whole requests batch by key.
    step_batching: bool = False
    # Under step batching, a request waiting this long is admitted before every younger one
    # (cheapest first otherwise), so long work is not starved by a stream of short work.
    admission_age_s: float = 5.0
    # Benchmark aid: a /noop endpoint that validates a /score payload and does nothing else,
    # the framework's own ceiling. Off in production.
    noop_endpoint: bool = False
    # Server-side limits: past `request_timeout_s` BentoML answers 504, past
    # `max_concurrency` in-flight requests 429 (the batch queue itself is unbounded).
    request_timeout_s: int = 900
    max_concurrency: int = 128
    # Largest request body, in bytes, answered 413 past it before the rest is read. Sized to
    # the largest legitimate request for the bundled 28x28x1 checkpoints (MAX_IMAGES = 256
    # items per request): a /decode of 256 DDPM latents as /encode returns them, 784 floats
    # each written as at most 25 bytes ("-1.2345678901234567e-05, "), is
    # 256 * 784 * 25 = 5,017,600 bytes (+ 256 * 58 brackets); 256 images as nested arrays of
    # "255, " are 256 * 784 * 5 = 1.0 MB, and as base64 PNGs (an unfiltered, uncompressed
    # 28x28 PNG is ~880 bytes, 1,176 in base64) 0.3 MB. 16 MiB = 16,777,216 leaves more than
    # 3x for pretty-printed JSON; raise it for checkpoints with larger images.
    max_body_bytes: int = 16 * 1024 * 1024
    # API keys (service/auth.py): none means no authentication. Health and metrics stay open
    # unless `auth_health` is true.
    api_keys: tuple[str, ...] = ()
    auth_health: bool = False
    # Worker processes, each with its own copy of the models (metrics are summed over them).
    workers: int = 1
    # Model calls that may run at once in a worker; 0: one per CPU core on CPU, one on a GPU.
    model_lanes: int = 0
    # Threads torch uses inside one operation; 0: on CPU the cores shared out over the lanes
    # (one each by default), on a GPU torch's default.
    torch_threads: int = 0
    # Most work a synchronous request may ask for, in GFLOP estimated before it runs (network
    # evaluations x GFLOP per evaluation, service/costs.py); past it the answer is 413 and
    # points to the task endpoints. 0: no ceiling. On this project's 2-core CPU a lane runs
    # about 135 GFLOP/s, so 10,000 is about 75 s of one core; DDIM-50 of 64 images is 7,100,
    # the exact bound of one image 2,200, IWAE k = 5000 of 8 images 26,000. The CUDA figure
    # is about as long on the H100 that evaluated the bundled checkpoints (~13,000 GFLOP/s
    # for IWAE there).
    cpu_max_request_gflop: float = 10_000.0
    cuda_max_request_gflop: float = 1_000_000.0
    # Tasks (docs/tasks.md): "" keeps them in a SQLite file under `task_dir`, which outlives
    # the server (one machine); redis://HOST:PORT/DB in a Redis every replica shares.
    task_store: str = ""
    task_dir: Path = field(default_factory=lambda: Path("/tmp/elbo-serve-tasks"))
    # A running task's lease: a replica that stops renewing it (it died) loses the task this
    # long after, and another replica runs it again; each run is an attempt, at most this many.
    task_lease_s: float = 30.0
    task_max_attempts: int = 3
    # How long finished tasks (and their answers) are kept; most tasks waiting before a
    # submit is answered 429; tasks one worker runs at once (besides synchronous requests).
    task_retention_s: float = 86_400.0
    task_max_queued: int = 1_000
    task_concurrency: int = 1
    # CPU speed mode of the networks (models.nn.acceleration). "auto": measured at start-up
    # on this machine for each model (models/nn/mode_choice.py, docs/cpu_modes.md): the fastest
    # of float32 and channels_last whose bound stays within 1e-4 bits/dim of float32, cached
    # in `cpu_mode_cache_dir` per CPU, torch version and weights. channels_last measured 1.3x
    # on one Intel Xeon and 0.87x on an AMD EPYC, so no fixed default is right. "true" or
    # "false" forces channels_last on or off, unmeasured, as does `compile` = true
    # (torch.compile: minutes of compiling for little, never chosen automatically).
    # bf16 autocast: with "auto" a candidate only where the CPU has bf16 in hardware
    # (AVX512-BF16 or AMX), and it must pass the same bound check (it moved bounds by 0.016-
    # 0.094 bits/dim where measured); forced together with channels_last true/false, it
    # applies where the CPU has it natively (elsewhere oneDNN emulates it, 3-4x slower).
    channels_last: str = "auto"
    compile: bool = False
    bf16_autocast: bool = False
    cpu_mode_cache_dir: Path = field(default_factory=lambda: Path("/tmp/elbo-serve-cpu-modes"))

    @classmethod
    def from_env(cls) -> Settings:
        defaults = cls()
        return cls(
            model_dir=Path(_env("MODEL_DIR", str(defaults.model_dir))),
            extra_models=_legacy_checkpoints()
            + read_named_paths(_env("MODELS", ""), ENV_PREFIX + "MODELS"),
            device=_env("DEVICE", defaults.device),
            cpu_max_batch_images=int(
                _env("CPU_MAX_BATCH_IMAGES", str(defaults.cpu_max_batch_images))
            ),
            cuda_max_batch_images=int(
                _env("CUDA_MAX_BATCH_IMAGES", str(defaults.cuda_max_batch_images))
            ),
            image_chunk_rows=int(_env("IMAGE_CHUNK_ROWS", str(defaults.image_chunk_rows))),
            cuda_image_chunk_rows=int(
                _env("CUDA_IMAGE_CHUNK_ROWS", str(defaults.cuda_image_chunk_rows))
            ),
            bound_call_rows=int(_env("BOUND_CALL_ROWS", str(defaults.bound_call_rows))),
            cuda_bound_call_rows=int(
                _env("CUDA_BOUND_CALL_ROWS", str(defaults.cuda_bound_call_rows))
            ),
            batch_wait_ms=float(_env("BATCH_WAIT_MS", str(defaults.batch_wait_ms))),
            batching=_flag("BATCHING", defaults.batching),
            step_batching=_flag("STEP_BATCHING", defaults.step_batching),
            admission_age_s=float(_env("ADMISSION_AGE_S", str(defaults.admission_age_s))),
            noop_endpoint=_flag("NOOP_ENDPOINT", defaults.noop_endpoint),
            request_timeout_s=int(_env("REQUEST_TIMEOUT_S", str(defaults.request_timeout_s))),
            max_concurrency=int(_env("MAX_CONCURRENCY", str(defaults.max_concurrency))),
            max_body_bytes=_positive_int("MAX_BODY_BYTES", defaults.max_body_bytes),
            api_keys=read_api_keys(_env("API_KEYS", ""), _env("API_KEYS_FILE", "")),
            auth_health=_flag("AUTH_HEALTH", defaults.auth_health),
            workers=int(_env("WORKERS", str(defaults.workers))),
            model_lanes=int(_env("MODEL_LANES", str(defaults.model_lanes))),
            torch_threads=int(_env("TORCH_THREADS", str(defaults.torch_threads))),
            task_store=_task_store(_env("TASK_STORE", defaults.task_store)),
            task_dir=Path(_env("TASK_DIR", str(defaults.task_dir))),
            task_lease_s=_positive_float("TASK_LEASE_S", defaults.task_lease_s),
            task_max_attempts=_positive_int("TASK_MAX_ATTEMPTS", defaults.task_max_attempts),
            task_retention_s=_positive_float("TASK_RETENTION_S", defaults.task_retention_s),
            task_max_queued=_positive_int("TASK_MAX_QUEUED", defaults.task_max_queued),
            task_concurrency=_positive_int("TASK_CONCURRENCY", defaults.task_concurrency),
            channels_last=_choice("CHANNELS_LAST", defaults.channels_last, CHANNELS_LAST_VALUES),
            compile=_flag("COMPILE", defaults.compile),
            bf16_autocast=_flag("BF16_AUTOCAST", defaults.bf16_autocast),
            cpu_mode_cache_dir=Path(_env("CPU_MODE_CACHE_DIR", str(defaults.cpu_mode_cache_dir))),
            cpu_max_request_gflop=float(
                _env("CPU_MAX_REQUEST_GFLOP", str(defaults.cpu_max_request_gflop))
            ),
            cuda_max_request_gflop=float(
                _env("CUDA_MAX_REQUEST_GFLOP", str(defaults.cuda_max_request_gflop))
            ),
        )

    def task_store_config(self) -> StoreConfig:
        from service.tasks.store import StoreConfig

        return StoreConfig(
            url=self.task_store,
            directory=str(self.task_dir),
            lease_s=self.task_lease_s,
            max_attempts=self.task_max_attempts,
            retention_s=self.task_retention_s,
            max_queued=self.task_max_queued,
        )

    def served_directories(self) -> dict[str, Path]:
        """name -> checkpoint directory of every model to serve."""
        from models.core.repository import check_model_name, servable_checkpoints

        served = servable_checkpoints(self.model_dir)
        served.update((check_model_name(name), path) for name, path in self.extra_models)
        if not served:
            raise ValueError(
                f"no servable checkpoints in {self.model_dir} ({ENV_PREFIX}MODEL_DIR) and none "
                f"in {ENV_PREFIX}MODELS"
            )
        return served

    def resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(
                f"{ENV_PREFIX}DEVICE must be auto, cpu or cuda[:N], got {self.device!r}"
            )
        return self.device

    def lanes(self, device: str) -> int:
        if self.model_lanes > 0:
            return self.model_lanes
        return 1 if device.startswith("cuda") else available_cores()

    def threads_per_call(self, device: str) -> int | None:
        """Torch intra-op threads; None: leave torch's default."""
        if self.torch_threads > 0:
            return self.torch_threads
        if device.startswith("cuda"):
            return None
        return max(1, available_cores() // self.lanes(device))

    def chunk_rows(self, device: str) -> int | None:
        """Rows per sampling/decoding network call; None: one call for the whole batch."""
        rows = self.cuda_image_chunk_rows if device.startswith("cuda") else self.image_chunk_rows
        return rows or None

    def acceleration(self, device: str) -> Acceleration | None:
        """The CPU speed mode the settings force on ``device`` (none on a GPU); None: the
        service measures which to use (``channels_last`` "auto")."""
        from models.nn.acceleration import Acceleration, native_bf16_supported

        if device.startswith("cuda"):
            return Acceleration()
        if self.channels_last == "auto" and not self.compile:
            return None
        return Acceleration(
            channels_last=self.channels_last == "true",
            compile=self.compile,
            bf16_autocast=self.bf16_autocast and native_bf16_supported(),
        )

    def rows_per_bound_call(self, device: str) -> int:
        """Rows per network call of a likelihood bound (at least one per image)."""
        return self.cuda_bound_call_rows if device.startswith("cuda") else self.bound_call_rows

    def max_batch_images(self, device: str) -> int:
        return (
            self.cuda_max_batch_images if device.startswith("cuda") else self.cpu_max_batch_images
        )

    def request_ceiling(self, device: str) -> Ceiling:
        """The most GFLOP a synchronous request may cost on ``device``."""
        if device.startswith("cuda"):
            return Ceiling(self.cuda_max_request_gflop, ENV_PREFIX + "CUDA_MAX_REQUEST_GFLOP")
        return Ceiling(self.cpu_max_request_gflop, ENV_PREFIX + "CPU_MAX_REQUEST_GFLOP")
