"""The work behind the endpoints, for any served model.

Each call resolves the request's model by name, lets the model's kind check and complete the
request's options, estimates the cost (refusing work past the synchronous ceiling with a 413
where asked), hands one job to the batcher, which runs it with concurrent jobs of the same
key in one call (:mod:`service.runners`), and converts the result into the response. Nothing
here knows which kinds exist.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from models.kinds import Work, check_k
from service.costs import Cost, refuse_past_ceiling
from service.errors import NonFiniteResultError, RequestError
from service.repository import Repository, ServedModel
from service.schemas import (
    DECODE_OPTIONS,
    ENCODE_OPTIONS,
    MAX_LATENT_ABS,
    SAMPLE_OPTIONS,
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    ImageBound,
    ImageScore,
    LikelihoodRequest,
    LikelihoodResponse,
    ModelInfo,
    ModelsResponse,
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Ceiling, Settings

if TYPE_CHECKING:
    from models.nn.mode_choice import ModeChoice

logger = logging.getLogger("elbo_serve")
Progress = Callable[[int, int], None]
FEWER_IMAGES = "send fewer images (or fewer steps) per request: the cost grows with each"


def as_task(task: str) -> str:
    """Where work past the synchronous ceiling goes instead."""
    return (
        f"submit it to POST /{task}/submit instead, which runs it in the background "
        f"without holding up cheaper requests (then GET /{task}/status?task_id=... and "
        f"GET /{task}/get?task_id=...; progress at POST /task_progress)"
    )


SCORE_INSTEAD = (
    "score fewer images per request (the cost grows with each, and with k or regret_steps), "
    "or " + as_task("score_task")
)


def _publish_calibrations(repository: Repository, metrics: Any) -> None:
    """Each served model card's calibration of the bound, per method, as gauges: the reference
    that the bits/dim of served images (labelled by the same model and method) are compared
    with."""
    from models.eval.plan import bound_calibrations

    for served in repository.values():
        for method, calibration in bound_calibrations(served.card).items():
            metrics.set_calibration(
                served.name,
                method,
                calibration.mean,
                calibration.std,
                len(calibration.normal_scores),
            )


class BatchKey(NamedTuple):
    """Everything a batched model call depends on besides its inputs."""

    model: str
    operation: str
    options: tuple[Any, ...] = ()
    denoising_steps: int = 0  # network steps of one loop, for the metric


def _given(request: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The options among ``names`` that the request set."""
    return {name: value for name in names if (value := getattr(request, name)) is not None}


def _key_options(options: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(options.items()))


def _step_scheduler(
    batcher: Any, max_batch: int, age_s: float, call_rows: int, observe, metrics: Any
):
    """A step scheduler on the batcher's lanes, reporting each call as a batch of operation
    'steps' and each request dropped part-way as a stopped one."""
    from service.stepping import StepScheduler

    def stepped(model: str, rows: int, seconds: float) -> None:
        observe(BatchKey(model, "steps", denoising_steps=1), rows, seconds)

    def stopped(model: str, rows: int, seconds: float) -> None:
        metrics.BATCHES_STOPPED.labels(model, "steps").inc()

    return StepScheduler(batcher.lane_pool, max_batch, age_s, stepped, stopped, call_rows=call_rows)


class ModelCalls:
    def __init__(
        self,
        repository: Repository,
        batcher: Any,
        metrics: Any,
        runners: Any,
        ceiling: Ceiling,
        chunk_rows: int | None,
        bound_call_rows: int,
        stepper: Any = None,
        cpu_modes: Mapping[str, ModeChoice] | None = None,
    ) -> None:
        self.repository, self.batcher, self.metrics = repository, batcher, metrics
        self.runners, self.ceiling = runners, ceiling
        self.chunk_rows, self.bound_call_rows = chunk_rows, bound_call_rows
        self.stepper = stepper  # a StepScheduler, or None: every operation goes to the batcher
        self.cpu_modes = dict(cpu_modes or {})  # model -> its CPU speed mode (none on a GPU)

    @classmethod
    def from_settings(
        cls, settings: Settings, device: str, metrics: Any, observe: Callable[..., None]
    ) -> ModelCalls:
        """Load the repository onto ``device`` (with the CPU speed modes settings ask for),
        and a batcher that reports each executed batch to ``observe(key, items, seconds)``
        and counts those stopped because their requests went away."""
        import torch

        from service import runners
        from service.batching import KeyedBatcher
        from service.cpu_modes import serve_in_chosen_modes
        from service.repository import load_repository

        if (threads := settings.threads_per_call(device)) is not None:
            torch.set_num_threads(threads)
        repository = load_repository(
            settings.served_directories(),
            device,
            lambda name, seconds: metrics.CHECKPOINT_LOAD_SECONDS.labels(name).set(seconds),
        )
        _publish_calibrations(repository, metrics)
        cpu_modes = serve_in_chosen_modes(repository, settings, device, metrics)
        ceiling = settings.request_ceiling(device)
        logger.info(
            "GFLOP per image and network evaluation: %s; synchronous requests up to %s GFLOP",
            {name: served.costs.gflop_per_evaluation for name, served in repository.items()},
            f"{ceiling.gflop:,.0f}" if ceiling.gflop else "any",
        )
        lanes = settings.lanes(device)
        if settings.batching:
            max_batch, wait_s = settings.max_batch_images(device), settings.batch_wait_ms / 1000
        else:  # one request per model call, sent at once
            max_batch, wait_s = 1, 0.0

        def stopped(key: BatchKey, items: int, seconds: float) -> None:
            metrics.BATCHES_STOPPED.labels(key.model, key.operation).inc()

        batcher = KeyedBatcher(max_batch, wait_s, observe, lanes, on_stop=stopped)
        logger.info("%d model lanes, %d torch threads each", lanes, torch.get_num_threads())
        stepper = None
        if settings.step_batching and settings.batching:
            age_s, call_rows = settings.admission_age_s, settings.rows_per_bound_call(device)
            stepper = _step_scheduler(batcher, max_batch, age_s, call_rows, observe, metrics)
            logger.info("step-level batching of sampling, encoding and decoding")
        return cls(
            repository,
            batcher,
            metrics,
            runners,
            ceiling,
            settings.chunk_rows(device),
            settings.rows_per_bound_call(device),
            stepper,
            cpu_modes,
        )

    def served(self, name: str) -> ServedModel:
        return self.repository.get_served(name)

    def _cost(self, served: ServedModel, work: Work, field: str | None, instead: str) -> Cost:
        """The work's cost; past the ceiling a 413 naming ``field`` and ``instead``, unless
        ``field`` is None (tasks, which run in the background)."""
        cost = served.cost(work)
        if field is not None:
            refuse_past_ceiling(cost, self.ceiling, field, instead)
        return cost

    def _images(self, served: ServedModel, items: list[Any]):
        from service.imaging import decode_images

        return decode_images(items, served.image_shape)

    async def _operation(self, served: ServedModel, runner, work: Work, job, cost: Cost):
        """One sample, encode or decode job through the batcher, keyed by the model, the
        operation and its options, and run by that operation's generic runner."""
        options = work.options or {}
        if self.stepper is not None and work.operation in served.kind.stepwise_operations:
            return await self._steps(served, work, job, cost)
        steps = served.kind.denoising_steps(served.model, work)
        key = BatchKey(served.name, work.operation, _key_options(options), steps)
        run = functools.partial(
            runner, served.kind, served.model, options=options, chunk_rows=self.chunk_rows
        )
        return await self.batcher.submit(key, run, job, work.images, cost.gflop)

    async def _steps(self, served: ServedModel, work: Work, job, cost: Cost):
        """The job's loop in the model's step-level loop (service.stepping), sharing every
        network call with the model's other running requests whatever their options."""
        runner = self.runners.STEP_RUNNERS[work.operation]
        request = runner(served.kind, served.model, job, work.options or {})
        network = served.kind.step_network(served.model, self.chunk_rows)
        progress = getattr(job, "progress", None)
        return await self.stepper.submit(
            served.name, network, request.make, request.finish, work.images, cost.gflop, progress
        )

    def check(self, request: SampleRequest | LikelihoodRequest) -> None:
        """Refuse now (RequestError, or the kind's OptionError) what running ``request`` as
        a task would refuse: its model, options, bound, k and images; so a submission with a
        bad value is a 400 at once, not a task that fails later. Tasks have no cost ceiling."""
        served = self.served(request.model)
        if isinstance(request, SampleRequest):
            served.sample_options(request.sampler, _given(request, SAMPLE_OPTIONS))
            return
        if isinstance(request, ScoreRequest):  # its options and the card's calibration
            served.plan(request)
            self._images(served, request.images)
            return
        check_k(served.method(request.method), request.k)
        self._images(served, request.images)

    # Sampling ------------------------------------------------------------------------------

    async def sample(
        self, request: SampleRequest, progress: Progress | None = None, synchronous: bool = True
    ) -> SampleResponse:
        from service.imaging import images_payload

        served = self.served(request.model)
        given = _given(request, SAMPLE_OPTIONS)
        options = served.sample_options(request.sampler, given)
        work = Work("sample", request.n, options=options)
        field = "n" if synchronous else None
        cost = self._cost(served, work, field, as_task("sample_task"))
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        job = self.runners.SampleJob(request.n, seed, progress)
        images = await self._operation(served, self.runners.sample, work, job, cost)
        self.metrics.IMAGES_GENERATED.labels(served.name, options["sampler"]).inc(request.n)
        return SampleResponse(
            model=served.name,
            n=request.n,
            seed=seed,
            sampler=options["sampler"],
            steps=options.get("steps"),
            **images_payload(images, request.output),
        )

    # Bounds and scores -------------------------------------------------------------------

    async def _bound(
        self, served: ServedModel, method: str, k: int | None, job, per_dim: bool = False
    ) -> dict:
        """The bound's terms; with ``per_dim`` also per dimension, for anomaly maps."""
        key = BatchKey(served.name, f"likelihood_{method}" + ("_per_dim" if per_dim else ""), (k,))
        if per_dim:
            run = functools.partial(
                self.runners.bound_per_dim, served.kind, served.method(method), served.model
            )
        else:
            run = functools.partial(self.runners.bound, served.method(method), served.model)
        run = functools.partial(run, k=k, max_batch=self.bound_call_rows)
        cost = served.cost(Work("likelihood", job.rows, method, k))
        return await self.batcher.submit(key, run, job, job.rows, cost.gflop)

    def _observe_bounds(self, served: ServedModel, method: str, bits_per_dim) -> None:
        """Each incoming image's bound, once, into the histogram the drift alerts read."""
        for value in bits_per_dim.tolist():
            self.metrics.LIKELIHOOD_BITS_PER_DIM.labels(served.name, method).observe(value)

    async def _term_vector(self, served: ServedModel, method: str, k: int | None, job):
        """The kind's term vectors (B, F) of ``method``'s bound (its term method)."""
        if method != served.kind.term_method:
            raise RequestError(
                "method", f"term vectors split {served.kind.term_method!r}, not {method!r}"
            )
        key = BatchKey(served.name, f"terms_{method}", (k,))
        run = functools.partial(
            self.runners.term_vector,
            served.kind,
            served.model,
            k=k,
            max_batch=self.bound_call_rows,
        )
        cost = served.cost(Work("likelihood", job.rows, method, k))
        out = await self.batcher.submit(key, run, job, job.rows, cost.gflop)
        return out["terms"]

    async def likelihood(
        self,
        request: LikelihoodRequest,
        progress: Progress | None = None,
        synchronous: bool = True,
    ) -> LikelihoodResponse:
        served = self.served(request.model)
        method = served.method(request.method)
        k = check_k(method, request.k)
        work = Work("likelihood", len(request.images), method.name, k)
        self._cost(served, work, "images" if synchronous else None, as_task("likelihood_task"))
        x = self._images(served, request.images)
        job = self.runners.ImagesJob(x, request.seed, progress)
        terms = await self._bound(served, method.name, k, job)
        self._observe_bounds(served, method.name, terms["total_bits_per_dim"])
        names = [name for name in ImageBound.model_fields if name in terms]
        columns = {name: terms[name].tolist() for name in names}
        results = [
            ImageBound(**{name: columns[name][i] for name in names}) for i in range(job.rows)
        ]
        return LikelihoodResponse(
            model=served.name, method=method.name, k=k, seed=request.seed, results=results
        )

    async def _regret(self, served: ServedModel, plan: Any, job) -> dict:
        """The plan's Likelihood Regret: the bound's terms with the amortised posterior and
        the optimised bound (OPTIMISED_TOTAL_BITS_PER_DIM), per image."""
        steps, rate = plan.regret_steps, plan.regret_learning_rate
        key = BatchKey(served.name, f"regret_{plan.method.name}", (steps, rate))
        run = functools.partial(
            self.runners.regret,
            plan.regret,
            served.model,
            steps=steps,
            learning_rate=rate,
            max_batch=self.bound_call_rows,
        )
        cost = served.cost(Work("regret", job.rows, plan.method.name, steps=steps))
        return await self.batcher.submit(key, run, job, job.rows, cost.gflop)

    async def score(
        self,
        request: ScoreRequest,
        progress: Progress | None = None,
        synchronous: bool = True,
    ) -> ScoreResponse:
        """Run the request's scoring plan (models.eval.plan: resolved once, from the request
        and the model's card): the bound, or the term vector, the background's bound for
        'ratio', the Likelihood Regret (which gives the bound too) for 'regret', and the
        per-dimension bound for maps; the plan judges the results. ``synchronous``: refused
        past the cost ceiling (413); a task (/score_task) is not."""
        from models.kinds import OPTIMISED_TOTAL_BITS_PER_DIM, TOTAL_NATS_PER_DIM
        from service.maps import map_fields

        served = self.served(request.model)
        plan = served.plan(request)
        n = len(request.images)
        if plan.regret is not None:
            work = Work("regret", n, plan.method.name, plan.k, steps=plan.regret_steps)
        else:
            work = Work("likelihood", n, plan.method.name, plan.k)
        cost = self._cost(served, work, None, SCORE_INSTEAD)
        if plan.background is not None and served.background is not None:
            bound = plan.background
            extra = served.background.cost(
                Work("likelihood", work.images, bound.method.name, bound.k)
            )
            evaluations = {f"background {n}": count for n, count in extra.evaluations.items()}
            cost = Cost(cost.gflop + extra.gflop, {**cost.evaluations, **evaluations})
        if synchronous:
            refuse_past_ceiling(cost, self.ceiling, "images", SCORE_INSTEAD)
        x = self._images(served, request.images)
        job = self.runners.ImagesJob(x, request.seed, progress)
        per_dim = plan.pixel is not None
        bits_per_dim = vectors = background = optimised = None
        if plan.regret is not None:  # correction 'regret': the bound comes with it
            terms = await self._regret(served, plan, job)
            bits_per_dim = terms["total_bits_per_dim"]
            optimised = terms[OPTIMISED_TOTAL_BITS_PER_DIM]
            if per_dim:  # the maps come from the bound itself, a second pass
                terms = await self._bound(served, plan.method.name, plan.k, job, per_dim=True)
        elif plan.density is None:
            terms = await self._bound(served, plan.method.name, plan.k, job, per_dim=per_dim)
            bits_per_dim = terms["total_bits_per_dim"]
        else:  # correction 'terms': a density over the bound's term vector
            vectors = await self._term_vector(served, plan.method.name, plan.k, job)
            if per_dim:  # the maps come from the bound itself, a second pass
                terms = await self._bound(served, plan.method.name, plan.k, job, per_dim=True)
        if plan.background is not None:  # correction 'ratio': the background's bound, same seed
            assert served.background is not None
            background_terms = await self._bound(
                served.background, plan.background.method.name, plan.background.k, job
            )
            background = background_terms["total_bits_per_dim"]
        judged = plan.judge(x, bits_per_dim, vectors, background, optimised)
        self._observe_bounds(served, plan.method.name, judged.bits_per_dim)
        maps = [{}] * len(x)
        if plan.pixel is not None:
            maps = map_fields(plan.pixel, terms[TOTAL_NATS_PER_DIM], x, plan.map_normalisation)
        self.metrics.IMAGES_SCORED.labels(served.name, plan.method.name).inc(len(x))
        flagged = int(judged.is_anomaly.sum())
        self.metrics.ANOMALIES_FLAGGED.labels(served.name, plan.method.name).inc(flagged)
        background_bits = judged.background_bits_per_dim
        optimised_bits = judged.optimised_bits_per_dim
        results = [
            ImageScore(
                score=judged.score[i],
                bits_per_dim=float(judged.bits_per_dim[i]),
                png_bits_per_dim=judged.png_bits_per_dim[i],
                background_bits_per_dim=None if background_bits is None else background_bits[i],
                optimised_bits_per_dim=None if optimised_bits is None else optimised_bits[i],
                is_anomaly=bool(judged.is_anomaly[i]),
                percentile=judged.percentile[i],
                **maps[i],
            )
            for i in range(len(x))
        ]
        return ScoreResponse(
            model=served.name,
            method=plan.method.name,
            k=plan.k,
            correction=plan.correction,
            fpr=plan.fpr,
            threshold=plan.threshold,
            calibration_source=plan.calibration.source,
            calibration_images=len(plan.calibration.normal_scores),
            background=None if plan.background is None else plan.background.name,
            regret_steps=plan.regret_steps,
            regret_learning_rate=plan.regret_learning_rate,
            results=results,
        )

    # Encoding and decoding ---------------------------------------------------------------

    async def encode(self, request: EncodeRequest) -> EncodeResponse:
        served = self.served(request.model)
        options = served.kind.encode_options_for(served.model, _given(request, ENCODE_OPTIONS))
        work = Work("encode", len(request.images), options=options)
        cost = self._cost(served, work, "images", FEWER_IMAGES)
        x = self._images(served, request.images)
        job = self.runners.ImagesJob(x, request.seed)
        out = await self._operation(served, self.runners.encode, work, job, cost)
        fields = {n: v.tolist() for n, v in out.items() if n in EncodeResponse.model_fields}
        return EncodeResponse(model=served.name, steps=options.get("steps"), **fields)

    async def decode(self, request: DecodeRequest) -> DecodeResponse:
        from models.core.pixels import NonFiniteError
        from service.imaging import decode_latents, images_payload

        served = self.served(request.model)
        options = served.kind.decode_options_for(served.model, _given(request, DECODE_OPTIONS))
        work = Work("decode", len(request.latents), options=options)
        cost = self._cost(served, work, "latents", FEWER_IMAGES)
        z = decode_latents(request.latents, served.latent_shape, MAX_LATENT_ABS)
        try:
            job = self.runners.ImagesJob(z)
            images = await self._operation(served, self.runners.decode, work, job, cost)
        except NonFiniteError as error:
            # Each image is a deterministic function of its latent alone, and these passed
            # validation: the client's values are to blame, so a 4xx that names them.
            raise NonFiniteResultError(
                f"latents[{error.rows[0]}]",
                "decoding this latent gave NaN or infinite pixel values; the model cannot "
                "decode it (latents from /encode or N(0, I) draws decode)",
            ) from error
        self.metrics.IMAGES_GENERATED.labels(served.name, "decode").inc(len(images))
        return DecodeResponse(model=served.name, **images_payload(images, request.output))

    # Listing -------------------------------------------------------------------------------

    def models(self, device: str) -> ModelsResponse:
        from models.core.config import config_to_dict
        from service.cpu_modes import cpu_mode_info

        return ModelsResponse(
            models={
                name: ModelInfo(
                    kind=served.kind.name,
                    checkpoint=str(served.checkpoint.directory),
                    device=device,
                    config=config_to_dict(served.model.config),
                    card=served.checkpoint.card,
                    cpu_mode=cpu_mode_info(self.cpu_modes.get(name)),
                    **served.describe(),
                )
                for name, served in self.repository.items()
            }
        )
