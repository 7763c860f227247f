"""The registry of model kinds: the one place that knows what a VAE or a DDPM is.

A :class:`ModelKind` says, for one kind of checkpoint: its config class and how to build the
network, the image shape a config gives, its likelihood bounds (name -> :class:`BoundMethod`),
its samplers and their options, how it encodes and decodes, what each operation costs in
network evaluations, its training objective and which weights it exports, and how the
evaluation measures it. Training, evaluation, the checkpoint loader and the service all
dispatch through :func:`kind_of` / :func:`architectures`; none of them compares kind names.

Kinds arrive by entry point (group :data:`ENTRY_POINT_GROUP`), the built-in ones included
(``[project.entry-points."elbo_serve.kinds"]`` in pyproject.toml): this module imports no kind.
A third kind is a package of its own that declares one entry point to its class
(docs/plugins.md, examples/categorical_vae). The interface a kind implements is public and
versioned (:data:`INTERFACE_VERSION`); a kind that declares a version this code does not
support, or whose module fails to import, is refused with the reason, and only checkpoints of
that kind are affected (:func:`refused_kinds`, :class:`UnavailableKindError`).
"""

from __future__ import annotations

import logging
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

if TYPE_CHECKING:  # torch stays unimported until a kind is used: the service's arbiter is lean
    import torch
    from torch import nn

    from models.core.card import Likelihood
    from models.core.progressive import Progressive
    from models.core.stepwise import Network, StepRows
    from models.eval.context import EvalContext, ScoreMethod

    Generators: TypeAlias = torch.Generator | Sequence[torch.Generator]
    # term name -> (B,) values; "total_bits_per_dim" always among them
    Terms: TypeAlias = dict[str, torch.Tensor]
Operation = Literal["sample", "likelihood", "encode", "decode", "regret"]
ImageShape = tuple[int, int, int]  # (C, H, W)
# The term a bound's per-dimension form adds: (B, C, H, W) nats summing to total_nats.
TOTAL_NATS_PER_DIM = "total_nats_per_dim"
# The terms a Likelihood Regret adds to its bound's: the bound with each image's optimised
# posterior, (B,) in nats and bits/dim, never above the amortised total_nats.
OPTIMISED_TOTAL_NATS = "optimised_total_nats"
OPTIMISED_TOTAL_BITS_PER_DIM = "optimised_total_bits_per_dim"

# Where kinds are found: an entry point ``name = "package.module:KindClass"`` in this group.
ENTRY_POINT_GROUP = "elbo_serve.kinds"
# The version of the interface below (Architecture, ModelKind and the types they use) that this
# code implements; a kind declares the one it was written against as ``interface_version``.
# Bump it, and keep the older numbers here while they still work, when the interface changes.
INTERFACE_VERSION = 1
SUPPORTED_INTERFACE_VERSIONS: frozenset[int] = frozenset({1})
# This distribution's name: its own entry points are the built-in kinds.
DISTRIBUTION = "elbo-serve"
logger = logging.getLogger("elbo_serve")


class OptionError(ValueError):
    """A request option this model cannot honour; ``field`` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Work:
    """What one request asks of a model, as far as its cost goes."""

    operation: Operation
    images: int  # images in, latents in, or images drawn
    method: str | None = None  # likelihood bound
    k: int | None = None
    options: Mapping[str, Any] | None = None  # the kind's sample/encode/decode options
    steps: int | None = None  # "regret": optimisation steps per image


@dataclass(frozen=True)
class BoundMethod:
    """One bound on -log p(x): ``run(model, x, k, generators, max_batch)`` yields progress
    and returns its :data:`Terms` (B,) for x (B, C, H, W) in [-1, 1]."""

    name: str
    description: str
    run: Callable[[nn.Module, torch.Tensor, int | None, Generators, int], Progressive[Terms]]
    k_range: tuple[int, int] | None = None  # None: the method takes no k
    default_k: int | None = None
    # ``run`` with the total also per dimension (TOTAL_NATS_PER_DIM), from the same draws; None
    # for a bound that does not split over dimensions (IWAE's log-mean-exp over samples).
    run_per_dim: (
        Callable[[nn.Module, torch.Tensor, int | None, Generators, int], Progressive[Terms]] | None
    ) = None


@dataclass(frozen=True)
class RegretMethod:
    """A Likelihood Regret (Xiao, Yan & Amit 2020, arXiv 2003.02977) of the bound ``bound``:
    ``run(model, x, steps, learning_rate, generators, max_batch)`` yields progress and returns
    :data:`Terms` (B,) for x (B, C, H, W) in [-1, 1]: the bound's own terms with the amortised
    posterior (the same draws as the bound's ``run`` with the same generators) and
    :data:`OPTIMISED_TOTAL_NATS` / :data:`OPTIMISED_TOTAL_BITS_PER_DIM`, the bound with each
    image's posterior optimised for ``steps`` steps, never above ``total_nats``. The regret is
    their difference, >= 0; zero steps give zero."""

    bound: str  # the method whose bound is refined (one of the kind's methods)
    description: str
    run: Callable[[nn.Module, torch.Tensor, int, float, Generators, int], Progressive[Terms]]
    steps_range: tuple[int, int]  # inclusive
    default_steps: int
    learning_rate: float  # the default; a calibration records the one it used


@dataclass(frozen=True)
class Option:
    """A request option of a kind's operation: its default and how to check a value."""

    default: Any
    description: str


class Architecture:
    """What a checkpoint file needs: the 'kind' in config.json, its config class, its network.

    ``interface_version`` is the :data:`INTERFACE_VERSION` the class was written against; it
    has no default, so that a kind written for another version says so rather than being
    taken for the current one."""

    interface_version: ClassVar[int]
    name: ClassVar[str]
    config_class: ClassVar[type]
    model_class: ClassVar[type[nn.Module]]

    def build(self, config: Any) -> nn.Module:
        return self.model_class(config)


class ModelKind(Architecture, ABC):
    """Everything the rest of the code needs to know about one kind of servable model."""

    # Options of sampling, encoding and decoding requests (request field -> default); a
    # request that sets another field to a non-default value is refused.
    sample_options: ClassVar[Mapping[str, Option]] = {}
    encode_options: ClassVar[Mapping[str, Option]] = {}
    decode_options: ClassVar[Mapping[str, Option]] = {}

    @abstractmethod
    def image_shape(self, config: Any) -> ImageShape:
        """(C, H, W) of the images the config's model reads and writes."""

    def networks(self, model: nn.Module) -> list[nn.Module]:
        """The convolutional networks inside ``model``, which CPU speed modes (channels_last,
        bf16 autocast, compilation: models.nn.acceleration) apply to."""
        return [model]

    # Likelihood ----------------------------------------------------------------------------

    @abstractmethod
    def methods(self, model: nn.Module) -> dict[str, BoundMethod]:
        """The bounds this model offers; the first is the default. k ranges may depend on
        the model (a DDPM's stratified bound takes up to 2 (T - 1) timesteps)."""

    # Term vectors: anomaly scores that see more than one number ---------------------------

    # The bound whose terms :meth:`term_vector` returns one by one; a density over them
    # (models.eval.typicality) is calibrated and served under this method's name and k.
    term_method: ClassVar[str]

    @abstractmethod
    def term_names(self, model: nn.Module, k: int | None = None) -> tuple[str, ...]:
        """Names of the F columns of :meth:`term_vector` for ``k``, each in nats."""

    @abstractmethod
    def term_vector(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Generators,
        max_batch: int,
        k: int | None = None,
    ) -> Progressive[torch.Tensor]:
        """x (B, C, H, W) in [-1, 1] -> (B, F) float64: :attr:`term_method`'s bound at ``k``
        split into F terms in nats (summed over dimensions) that add up to its total_nats;
        the same draws as the bound itself for the same generators."""

    # Likelihood Regret: an anomaly score that re-fits each image's posterior -------------

    def likelihood_regret(self, model: nn.Module) -> RegretMethod | None:
        """The Likelihood Regret this model offers, or None: the default, for a kind with no
        amortised posterior q(z|x) to optimise per image (a DDPM's posterior is fixed).
        Optional: a kind written against interface version 1 without it offers none."""
        return None

    def lacks_regret(self, model: nn.Module) -> str:
        """Why this model offers no Likelihood Regret, for the error a request gets."""
        return (
            f"a {self.name} model has no amortised posterior q(z|x) whose parameters can be "
            "optimised per image"
        )

    # Sampling, encoding, decoding --------------------------------------------------------

    @abstractmethod
    def samplers(self, model: nn.Module) -> tuple[str, ...]:
        """Names of the samplers; the first is the default."""

    def sample_options_for(
        self, model: nn.Module, sampler: str | None, given: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The sampler (default: the first) and its options as they will run: ``given`` (the
        options a request set) checked, the rest defaulted. Raises :class:`OptionError`."""
        samplers = self.samplers(model)
        if sampler is None:
            sampler = samplers[0]
        elif sampler not in samplers:
            raise OptionError("sampler", f"{self._offers(samplers)}, got {sampler!r}")
        options = _with_defaults(self.sample_options, given, f"sampling a {self.name}")
        options = self.check_sample_options(model, {"sampler": sampler, **options}, given)
        return self._within_limits(model, options, given)

    def check_sample_options(
        self, model: nn.Module, options: dict[str, Any], given: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Kind-specific checks of :meth:`sample_options_for` beyond the ranges of
        :meth:`option_limits`; options as they will run."""
        return options

    def encode_options_for(self, model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
        options = _with_defaults(self.encode_options, given, f"encoding with a {self.name}")
        return self._within_limits(model, options, given)

    def decode_options_for(self, model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
        options = _with_defaults(self.decode_options, given, f"decoding with a {self.name}")
        return self._within_limits(model, options, given)

    def option_limits(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """Inclusive ranges of the options whose limits depend on the model (every operation's
        options are checked against them)."""
        return {}

    def _within_limits(
        self, model: nn.Module, options: dict[str, Any], given: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A value a request gave outside its range is an OptionError; a default outside it
        (50 DDIM steps for a model of T = 20) is brought into it, since nobody asked for it."""
        checked = dict(options)
        for name, (low, high) in self.option_limits(model).items():
            if name not in checked:
                continue
            if name not in given:
                checked[name] = min(max(checked[name], low), high)
            elif not low <= checked[name] <= high:
                raise OptionError(
                    name, f"this model takes {low}..{high} {name}, got {checked[name]}"
                )
        return checked

    def method_for(self, model: nn.Module, method: str | None) -> BoundMethod:
        """The bound called ``method`` (default: the first); OptionError for another name."""
        methods = self.methods(model)
        if method is None:
            return next(iter(methods.values()))
        if method not in methods:
            raise OptionError("method", f"{self._offers(methods)}, got {method!r}")
        return methods[method]

    def pixel_nats(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Generators,
        max_batch: int,
        method: str | None = None,
        k: int | None = None,
    ) -> Progressive[torch.Tensor]:
        """Where the codelength of x (B, C, H, W) in [-1, 1] goes: (B, C, H, W) nats per
        dimension, summing over (C, H, W) to the ``total_nats`` that ``method`` (default: the
        first) gives with the same generators and k. Which per-dimension terms each bound has
        is its kind's business (VAE elbo: -log p(x_i|z) + KL / D; DDPM: L_0 + the denoising
        terms + L_T, per dimension)."""
        terms = yield from self.bound_per_dim(model, x, generators, max_batch, method, k)
        return terms[TOTAL_NATS_PER_DIM]

    def bound_per_dim(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Generators,
        max_batch: int,
        method: str | None = None,
        k: int | None = None,
    ) -> Progressive[Terms]:
        """The bound's :data:`Terms`, as ``run`` gives them, and TOTAL_NATS_PER_DIM."""
        bound = self.method_for(model, method)
        if bound.run_per_dim is None:
            raise OptionError("method", f"{bound.name} has no per-pixel form; {self._maps(model)}")
        return bound.run_per_dim(model, x, check_k(bound, k), generators, max_batch)

    def _maps(self, model: nn.Module) -> str:
        names = [name for name, m in self.methods(model).items() if m.run_per_dim is not None]
        return f"maps come with {' or '.join(repr(n) for n in names) or 'no method'}"

    def _offers(self, names: Sequence[str] | Mapping[str, Any]) -> str:
        return f"a {self.name} model offers " + " or ".join(repr(n) for n in names)

    @abstractmethod
    def sample(
        self,
        model: nn.Module,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[torch.Tensor]:
        """len(generators) images (B, C, H, W) in [-1, 1], row i drawn with generators[i]."""

    @abstractmethod
    def latent_shape(self, model: nn.Module) -> tuple[int, ...]:
        """Shape of one latent, as :meth:`encode` returns it and :meth:`decode` reads it."""

    @abstractmethod
    def encode(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[Terms]:
        """x (B, C, H, W) in [-1, 1] -> named (B, ...) outputs; names in :attr:`encode_pixels`
        are images in [-1, 1]."""

    encode_pixels: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def decode(
        self,
        model: nn.Module,
        z: torch.Tensor,
        options: Mapping[str, Any],
        chunk_rows: int | None,
    ) -> Progressive[torch.Tensor]:
        """Latents (B, *latent_shape) -> images (B, C, H, W) in [-1, 1]."""

    # Step-level loops (models.core.stepwise) -------------------------------------------------

    # Operations whose work is a loop of network calls the kind offers as per-request rows
    # (sample_rows, encode_rows, decode_rows), so that requests at different steps can share
    # a call; the others run as one call of sample / encode / decode.
    stepwise_operations: ClassVar[frozenset[str]] = frozenset()

    def step_network(self, model: nn.Module, chunk_rows: int | None) -> Network:
        """The network that the rows of :attr:`stepwise_operations` share calls of."""
        raise NotImplementedError(f"a {self.name} model has no step-level loops")

    def sample_rows(
        self, model: nn.Module, generators: Sequence[torch.Generator], options: Mapping[str, Any]
    ) -> StepRows:
        """:meth:`sample`'s loop as one request's rows, row i drawn with generators[i]."""
        raise NotImplementedError(f"a {self.name} model has no step-level sampling")

    def encode_rows(
        self,
        model: nn.Module,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        options: Mapping[str, Any],
    ) -> StepRows:
        """:meth:`encode`'s loop as one request's rows; its result is encode's terms."""
        raise NotImplementedError(f"a {self.name} model has no step-level encoding")

    def decode_rows(
        self, model: nn.Module, z: torch.Tensor, options: Mapping[str, Any]
    ) -> StepRows:
        """:meth:`decode`'s loop as one request's rows."""
        raise NotImplementedError(f"a {self.name} model has no step-level decoding")

    # Cost ------------------------------------------------------------------------------------

    @abstractmethod
    def networks_gflop(self, model: nn.Module) -> dict[str, float]:
        """GFLOP of one evaluation of each network on one image."""

    @abstractmethod
    def evaluations(self, model: nn.Module, work: Work) -> dict[str, int]:
        """Evaluations of each network per image for ``work``."""

    def denoising_steps(self, model: nn.Module, work: Work) -> int:
        """Network steps of one sampling/encoding/decoding loop, for the metrics (0: none)."""
        return 0

    # Training --------------------------------------------------------------------------------

    # Whether the exported weights are the exponential moving average or the raw ones.
    exports_ema: ClassVar[bool] = False

    @abstractmethod
    def training_loss(
        self, model: nn.Module, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, 0-d tensors to log) on a batch x (B, C, H, W) in [-1, 1]."""

    # Evaluation ------------------------------------------------------------------------------

    # The module that measures this kind for the model card (imported when an evaluation
    # runs: it needs the evaluation's dependencies, serving does not), with the functions
    # likelihood_report(model, ctx), evaluation_samplers(model, ctx), score_methods(model, ctx).
    evaluation_module: ClassVar[str]

    def likelihood_report(
        self, model: nn.Module, ctx: EvalContext
    ) -> tuple[Likelihood, torch.Tensor]:
        """The card's likelihood section and the per-image headline bound (N,) bits/dim."""
        return self._evaluation().likelihood_report(model, ctx)

    def evaluation_samplers(
        self, model: nn.Module, ctx: EvalContext
    ) -> dict[str, tuple[int, Callable[[int], torch.Tensor]]]:
        """name -> (samples to draw, n -> uint8 images (n, C, H, W)) for sample quality."""
        return self._evaluation().evaluation_samplers(model, ctx)

    def score_methods(self, model: nn.Module, ctx: EvalContext) -> list[ScoreMethod]:
        """The bounds the evaluation measures and calibrates as anomaly scores."""
        return self._evaluation().score_methods(model, ctx)

    def _evaluation(self) -> Any:
        import importlib

        return importlib.import_module(self.evaluation_module)

    # The headline bound of likelihood_report, reused as that method's anomaly scores.
    headline_method: ClassVar[str]


def _with_defaults(
    options: Mapping[str, Option], given: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """``given`` over the options' defaults; an option the operation does not take is refused
    rather than ignored, so a misplaced option never changes nothing silently."""
    for name in given:
        if name not in options:
            takes = ", ".join(options) or "no options"
            raise OptionError(name, f"{what} takes {takes}; leave {name} out")
    return {name: given.get(name, option.default) for name, option in options.items()}


def check_k(method: BoundMethod, k: int | None) -> int | None:
    """The k a bound will run with: the method's default when None; OptionError when the
    method takes none or ``k`` is outside its range."""
    if method.k_range is None:
        if k is not None:
            raise OptionError("k", f"{method.name!r} takes no k; leave it out")
        return None
    low, high = method.k_range
    if k is None:
        return method.default_k
    if not low <= k <= high:
        raise OptionError("k", f"{method.name} takes k in {low}..{high}, got {k}")
    return k


class KindError(ValueError):
    """A checkpoint names a kind the registry does not know."""


class UnavailableKindError(KindError):
    """A kind that is installed but refused: its module failed to import, or it declares an
    interface version this code does not support. The message says which and why."""


@dataclass(frozen=True)
class _Registry:
    architectures: dict[str, Architecture]
    refused: dict[str, str]  # kind name -> why it is not available


_loaded: list[_Registry] = []  # the registry, once built


def architectures() -> dict[str, Architecture]:
    """Every checkpointable architecture by name: the servable kinds and the classifier.

    Built on first use from the entry points of :data:`ENTRY_POINT_GROUP`, so that importing
    this module imports no network; the kinds that were refused are in :func:`refused_kinds`."""
    return _registry().architectures


def refused_kinds() -> dict[str, str]:
    """Kind name -> why it was refused (an import error, an unsupported interface version)."""
    return _registry().refused


def reload_kinds() -> None:
    """Forget the registry, so that the next use reads the entry points again (tests, and a
    process that installed a kind after its first use)."""
    _loaded.clear()


def _registry() -> _Registry:
    if not _loaded:
        _loaded.append(_discover())
    return _loaded[0]


def _discover() -> _Registry:
    found: dict[str, Architecture] = {}
    refused: dict[str, str] = {}
    for point in _kind_entry_points():
        if point.name in found or point.name in refused:
            logger.warning(
                "model kind %r: entry point %s ignored, %r is already registered",
                point.name,
                _where(point),
                point.name,
            )
            continue
        try:
            found[point.name] = _load(point)
        except UnavailableKindError as error:
            refused[point.name] = str(error)
            logger.error("model kind %r refused: %s", point.name, error)
    if not found and not refused:
        raise KindError(
            f"no model kinds are installed (entry point group {ENTRY_POINT_GROUP!r}): install "
            f"elbo-serve (pip install -e .) or run from a source tree with its pyproject.toml"
        )
    return _Registry(found, refused)


def _kind_entry_points() -> list[EntryPoint]:
    """The group's installed entry points; where this distribution's own are not among them
    (a source tree that was never installed, or an install older than its entry points: the
    container image runs the copied source), the built-ins come from the pyproject.toml beside
    this package, the same declaration, so the built-in kinds are listed in one place."""
    # Ours first: a plug-in that declares a built-in kind's name is ignored, with a warning.
    installed = sorted(
        entry_points(group=ENTRY_POINT_GROUP), key=lambda p: _distribution(p) != DISTRIBUTION
    )
    if any(_distribution(point) == DISTRIBUTION for point in installed):
        return installed
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        return installed
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    declared = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    own = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in declared.items()]
    return own + installed


def _distribution(point: EntryPoint) -> str | None:
    dist = getattr(point, "dist", None)
    return None if dist is None else dist.name


def _where(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    package = f"{dist.name} {dist.version}" if dist is not None else f"{DISTRIBUTION} source tree"
    return f"'{point.name} = {point.value}' ({package})"


def _load(point: EntryPoint) -> Architecture:
    """The architecture an entry point names; UnavailableKindError saying why it is refused."""
    where = _where(point)
    try:
        loaded = point.load()
    except Exception as error:  # any error of a plug-in's import refuses that plug-in alone
        raise UnavailableKindError(
            f"entry point {where} failed to import: {type(error).__name__}: {error}"
        ) from error
    if not (isinstance(loaded, type) and issubclass(loaded, Architecture)):
        raise UnavailableKindError(
            f"entry point {where} is not a subclass of models.kinds.Architecture"
        )
    version = getattr(loaded, "interface_version", None)
    if version not in SUPPORTED_INTERFACE_VERSIONS:
        declared = (
            "declares no interface_version"
            if version is None
            else f"declares interface version {version!r}"
        )
        raise UnavailableKindError(
            f"{loaded.__qualname__} from entry point {where} {declared}; this elbo-serve "
            f"supports interface version(s) {sorted(SUPPORTED_INTERFACE_VERSIONS)}"
        )
    if getattr(loaded, "name", None) != point.name:
        raise UnavailableKindError(
            f"entry point {where}: the class's name is {getattr(loaded, 'name', None)!r}, not "
            f"{point.name!r} (checkpoints name the kind by the entry point's name)"
        )
    if getattr(loaded, "__abstractmethods__", None):
        missing = ", ".join(sorted(loaded.__abstractmethods__))
        raise UnavailableKindError(
            f"{loaded.__qualname__} from entry point {where} does not implement {missing}"
        )
    try:
        return loaded()
    except Exception as error:
        raise UnavailableKindError(
            f"{loaded.__qualname__} from entry point {where} failed to start: "
            f"{type(error).__name__}: {error}"
        ) from error


def architecture_of(name_or_model: str | nn.Module) -> Architecture:
    """The architecture called ``name``, or the one whose network class ``model`` is."""
    registered = architectures()
    if isinstance(name_or_model, str):
        if name_or_model in refused_kinds():
            raise UnavailableKindError(
                f"model kind {name_or_model!r} is installed but refused: "
                f"{refused_kinds()[name_or_model]}"
            )
        if name_or_model not in registered:
            raise KindError(f"unknown model kind {name_or_model!r}; known: {sorted(registered)}")
        return registered[name_or_model]
    # The nearest class in the model's MRO: a kind whose network extends another kind's
    # network (a VAE with another decoder) is not taken for that other kind.
    by_class = {architecture.model_class: architecture for architecture in registered.values()}
    for cls in type(name_or_model).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise KindError(f"not a registered model: {type(name_or_model).__name__}")


def kind_of(name_or_model: str | nn.Module) -> ModelKind:
    """The servable kind called ``name``, or of ``model``; KindError for anything else."""
    architecture = architecture_of(name_or_model)
    if not isinstance(architecture, ModelKind):
        raise KindError(f"{architecture.name!r} models are not servable")
    return architecture


def servable_kinds() -> list[str]:
    return sorted(n for n, a in architectures().items() if isinstance(a, ModelKind))
