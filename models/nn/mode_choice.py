"""The CPU speed mode of a model's networks, chosen by measuring them on the machine itself.

A mode (:class:`models.nn.acceleration.Acceleration`) that is fastest on one CPU family is
slower on the next: channels_last measured 1.3-1.5x on an Intel Xeon without bf16 and 0.85-0.91x
on an AMD EPYC. So at start-up :func:`choose_mode` times a model's hot calls (one sampling
chunk and one likelihood-bound call, :func:`hot_calls`) in each candidate mode, checks that the
bound on a fixed probe batch stays within ``tolerance_bits_per_dim`` of float32 eager, and
picks the fastest admissible mode (:func:`fastest_admissible`). The result is cached in a JSON
file keyed by the CPU, the torch version and threads, the model's weights and the candidates
(:func:`cache_key`), so a restart on the same machine does not measure again.

Everything here is plain PyTorch; the service calls :func:`choose_mode` once per model.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from models.core.noise import seeded_generator
from models.core.progressive import run_to_end
from models.nn.acceleration import (
    Acceleration,
    accelerate,
    bf16_autocast_usable,
    native_bf16_supported,
)

REFERENCE = "fp32_eager"
# Bounds may move this far from float32 eager (max over the probe images) for a mode to serve.
TOLERANCE_BITS_PER_DIM = 1e-4
# A mode must beat float32 eager by this factor (geometric mean over the hot calls): below it
# the difference is within what a shared machine's noise gives, and plain float32 is simplest.
MIN_SPEEDUP = 1.03
# CPU flags that decide which kernels oneDNN runs (bf16 natively only with the last three).
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
CACHE_VERSION = 1

# torch.compile is not among the automatic candidates: its first calls compiled for 190 s on
# this project's CPU (README, "CPU speed modes"), past any start-up budget; force it instead.
# bf16 autocast is a candidate only where the CPU has it natively and the caller allows it;
# the bound check then decides (it moved bounds by up to 0.094 bits/dim on an AMD EPYC).
FP32_CANDIDATES: dict[str, Acceleration] = {
    REFERENCE: Acceleration(),
    "channels_last": Acceleration(channels_last=True),
}
BF16_CANDIDATES: dict[str, Acceleration] = {
    "bf16": Acceleration(bf16_autocast=True),
    "channels_last+bf16": Acceleration(channels_last=True, bf16_autocast=True),
}

Source = Literal["measured", "cached", "forced"]
Call = Callable[[nn.Module], Any]


@dataclass(frozen=True)
class Machine:
    cpu: str  # the model name in /proc/cpuinfo
    flags: tuple[str, ...]  # those of FLAGS_THAT_MATTER this CPU has
    torch: str
    capability: str  # torch's CPU kernel level (DEFAULT, AVX2, AVX512)
    threads: int  # torch intra-op threads the timings ran with
    native_bf16: bool


def this_machine() -> Machine:
    cpu, flags = _cpuinfo()
    return Machine(
        cpu=cpu,
        flags=tuple(flag for flag in FLAGS_THAT_MATTER if flag in flags),
        torch=torch.__version__,
        capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(),
        native_bf16=native_bf16_supported(),
    )


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return name, flags


def candidate_modes(allow_bf16: bool) -> dict[str, Acceleration]:
    """The modes to measure: float32 ones always, bf16 ones only where asked and native."""
    candidates = dict(FP32_CANDIDATES)
    if allow_bf16 and native_bf16_supported() and bf16_autocast_usable():
        candidates |= BF16_CANDIDATES
    return candidates


@dataclass(frozen=True)
class HotCalls:
    """A model's hot calls on fixed inputs (name -> call(model)); ``calls[bound]`` returns
    the (B,) total bits/dim of the fixed probe batch, which a mode must keep."""

    calls: Mapping[str, Call]
    bound: str


def hot_calls(model: nn.Module, rows: int) -> HotCalls:
    """One sampling call of ``rows`` images at the fewest steps the sampler takes (one network
    call per chunk of ``rows``) and the default bound at its smallest k on ``rows`` images:
    the network calls that serving repeats. The probe batch is the float32 model's own samples
    from seed 0, rounded to 8 bits: images the model finds typical, for any image shape, with
    no data set at hand."""
    from models.kinds import kind_of

    kind = kind_of(model)
    method = kind.method_for(model, None)
    k = method.k_range[0] if method.k_range else None
    given = {}
    if "steps" in kind.sample_options:
        given["steps"] = kind.option_limits(model).get("steps", (1, 1))[0]
    options = kind.sample_options_for(model, None, given)

    @torch.no_grad()
    def sample(m: nn.Module) -> torch.Tensor:
        generators = [seeded_generator(i) for i in range(rows)]
        return run_to_end(kind.sample(m, generators, options, rows))

    probe = ((sample(model).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1

    @torch.no_grad()
    def bound(m: nn.Module) -> torch.Tensor:
        generators = [seeded_generator(1000 + i) for i in range(rows)]
        terms = run_to_end(method.run(m, probe, k, generators, rows))
        return terms["total_bits_per_dim"].double()

    bound_name = f"{method.name}_b{rows}"
    return HotCalls({f"sample_b{rows}": sample, bound_name: bound}, bound_name)


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # the chosen candidate's name
    source: Source
    # mode -> hot call -> median seconds (empty when forced)
    seconds: dict[str, dict[str, float]]
    # mode -> max |bits/dim - float32 eager's| over the probe batch
    bound_diff_bits_per_dim: dict[str, float]
    tolerance_bits_per_dim: float
    machine: Machine
    measure_seconds: float  # how long measuring took (0 when cached or forced)

    def speedups(self) -> dict[str, float]:
        """mode -> geometric mean over the hot calls of float32 eager's seconds over its own."""
        return speedups(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"speedup_over_fp32_eager": self.speedups()}


def speedups(seconds: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    if REFERENCE not in seconds:
        return {}
    base = seconds[REFERENCE]
    return {
        mode: math.exp(statistics.fmean(math.log(base[c] / s) for c, s in calls.items()))
        for mode, calls in seconds.items()
    }


def fastest_admissible(
    seconds: Mapping[str, Mapping[str, float]],
    bound_diff_bits_per_dim: Mapping[str, float],
    tolerance_bits_per_dim: float = TOLERANCE_BITS_PER_DIM,
    min_speedup: float = MIN_SPEEDUP,
) -> str:
    """The mode with the largest speed-up over float32 eager among those whose bound moved at
    most ``tolerance_bits_per_dim``; float32 eager itself unless one beats it by
    ``min_speedup``. ``seconds``: mode -> hot call -> seconds, float32 eager among them."""
    if REFERENCE not in seconds:
        raise ValueError(f"the timings must include {REFERENCE!r}, the reference")
    gains = speedups(seconds)
    admissible = [
        mode
        for mode in seconds
        if bound_diff_bits_per_dim.get(mode, math.inf) <= tolerance_bits_per_dim
        and gains[mode] >= min_speedup
    ]
    return max(admissible, key=gains.__getitem__, default=REFERENCE)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's class, state dict names, shapes and values (as loaded)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(machine: Machine, model_digest: str, modes: Sequence[str], probe: str) -> str:
    """What a measurement depends on: the CPU, torch, threads, weights, candidates, probe."""
    text = json.dumps([CACHE_VERSION, asdict(machine), model_digest, sorted(modes), probe])
    return hashlib.sha256(text.encode()).hexdigest()


def measure(
    model: nn.Module,
    calls: HotCalls,
    modes: Mapping[str, Acceleration],
    repeats: int = 3,
    budget_s: float = 2.0,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Median seconds of each hot call in each mode (the modes take turns in every repeat,
    so load from other jobs falls on all of them alike, after one untimed warm-up call each),
    and each mode's largest bound difference from float32 eager in bits/dim. Past
    ``budget_s`` seconds no further repeat starts (one timed repeat always runs)."""
    if REFERENCE not in modes:
        raise ValueError(f"the candidates must include {REFERENCE!r}, the reference")
    copies = {name: accelerate(copy.deepcopy(model), mode) for name, mode in modes.items()}
    bounds = {name: calls.calls[calls.bound](m) for name, m in copies.items()}  # also warms
    diffs = {n: (b - bounds[REFERENCE]).abs().max().item() for n, b in bounds.items()}
    for m in copies.values():  # the bound check has warmed the bound call
        for call_name, call in calls.calls.items():
            if call_name != calls.bound:
                call(m)
    samples: dict[str, dict[str, list[float]]] = {n: {c: [] for c in calls.calls} for n in modes}
    began = time.perf_counter()
    for repeat in range(repeats):
        if repeat and time.perf_counter() - began > budget_s:
            break
        for call_name, call in calls.calls.items():
            for name, m in copies.items():
                start = time.perf_counter()
                call(m)
                samples[name][call_name].append(time.perf_counter() - start)
    seconds = {n: {c: statistics.median(s) for c, s in cs.items()} for n, cs in samples.items()}
    return seconds, diffs


@dataclass(frozen=True)
class Rules:
    """How a mode is judged: the bound's tolerance, the speed-up a mode must show, and how
    long the timing may take (``repeats`` rounds, none started past ``budget_s``)."""

    tolerance_bits_per_dim: float = TOLERANCE_BITS_PER_DIM
    min_speedup: float = MIN_SPEEDUP
    repeats: int = 3
    budget_s: float = 2.0


def choose_mode(
    model: nn.Module,
    calls: Callable[[], HotCalls],
    modes: Mapping[str, Acceleration],
    cache_dir: Path | None,
    probe: str,
    rules: Rules = Rules(),
    timings: Callable[..., tuple[dict, dict]] = measure,
) -> ModeChoice:
    """The fastest admissible of ``modes`` for ``model`` on this machine, measured (by
    ``timings``, :func:`measure` unless a test injects figures) or read from ``cache_dir``
    (None: no cache). ``probe`` describes the hot calls (their rows), part of the cache key.
    The model itself is left as it is: apply the mode with ``accelerate(model,
    acceleration_named(choice.mode))``."""
    if cache_dir is None:
        return _measured(model, calls, modes, rules, timings)
    machine = this_machine()
    key = cache_key(machine, weights_digest(model), list(modes), f"{probe} {asdict(rules)}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"cpu_mode_{key[:32]}.json"
    # One process measures at a time (workers start together: they would slow each other's
    # timings down), and the others then read what it wrote.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                return _from_cache(json.loads(path.read_text()), machine)
            except (ValueError, KeyError, TypeError):
                pass  # a damaged or older file: measure again and overwrite it
        choice = _measured(model, calls, modes, rules, timings)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(choice), indent=2) + "\n")
        scratch.replace(path)
    return choice


def _measured(model, calls, modes, rules: Rules, timings) -> ModeChoice:
    start = time.perf_counter()
    seconds, diffs = timings(model, calls(), modes, rules.repeats, rules.budget_s)
    return ModeChoice(
        mode=fastest_admissible(seconds, diffs, rules.tolerance_bits_per_dim, rules.min_speedup),
        source="measured",
        seconds=seconds,
        bound_diff_bits_per_dim=diffs,
        tolerance_bits_per_dim=rules.tolerance_bits_per_dim,
        machine=this_machine(),
        measure_seconds=time.perf_counter() - start,
    )


def _from_cache(data: dict[str, Any], machine: Machine) -> ModeChoice:
    fields = {name: data[name] for name in ("mode", "seconds", "bound_diff_bits_per_dim")}
    return ModeChoice(
        **fields,
        source="cached",
        tolerance_bits_per_dim=float(data["tolerance_bits_per_dim"]),
        machine=machine,
        measure_seconds=0.0,
    )


def acceleration_named(name: str) -> Acceleration:
    """The mode whose :attr:`Acceleration.name` is ``name`` ("channels_last+bf16", ...)."""
    parts = set() if name == REFERENCE else set(name.split("+"))
    labels = {"channels_last": "channels_last", "bf16": "bf16_autocast", "compile": "compile"}
    if unknown := parts - set(labels):
        raise ValueError(f"unknown CPU mode part(s) {sorted(unknown)} in {name!r}")
    return Acceleration(**{labels[part]: True for part in parts})


def forced(name: str) -> ModeChoice:
    """A mode a setting asks for: served as it is, nothing measured."""
    return ModeChoice(name, "forced", {}, {}, TOLERANCE_BITS_PER_DIM, this_machine(), 0.0)
