"""The elbo-serve BentoML service: thin endpoints over :mod:`models`.

Each endpoint validates its body (schemas), converts images to tensors (imaging), hands one
job to the batcher, which runs it together with concurrent jobs of the same kind in one
``models`` call (runners), and converts the result back. Long work also has a task form
(``/sample_task``, ``/likelihood_task``: submit, status, get) with progress at ``/task_progress``.
Every job carries its estimated cost (costs): the batcher serves cheaper work first, and a
synchronous endpoint answers 413 past the request-cost ceiling, pointing to the task form.

Run from the repository root: ``bentoml serve`` (declared in pyproject.toml) or ``make serve``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from typing import Any, NamedTuple

import bentoml

from service.auth import HEALTH_PATHS, ApiKeys
from service.costs import Cost, Work, refuse_past_ceiling
from service.errors import (
    NonFiniteResultError,
    RequestError,
    answers_request_errors,
    use_one_line_client_error_logs,
)
from service.http_adapters import (
    BodySizeLimit,
    GetModels,
    MultipartImages,
    PublishedContract,
    use_leak_free_timeout,
)
from service.openapi import published_document
from service.schemas import (
    DEFAULT_K,
    K_RANGE,
    MAX_LATENT_ABS,
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
    ProgressRequest,
    ProgressResponse,
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings

logger = logging.getLogger("elbo_serve")
# Server limits are fixed when the service class is declared; the rest is read per instance.
SETTINGS = Settings.from_env()


def _as_task(task: str) -> str:
    """Where work past the synchronous ceiling goes instead."""
    return (
        f"submit it to POST /{task}/submit instead, which runs it in the background "
        f"without holding up cheaper requests (then GET /{task}/status?task_id=... and "
        f"GET /{task}/get?task_id=...; progress at POST /task_progress)"
    )


FEWER_IMAGES = "send fewer images (or fewer steps) per request: the cost grows with each"
SCORE_INSTEAD = (
    "score fewer images per request (the cost grows with each), or get the bound alone from "
    "POST /likelihood_task/submit, which runs it in the background"
)


class BatchKey(NamedTuple):
    """Everything a batched model call depends on besides its inputs."""

    model: str
    operation: str
    options: tuple[Any, ...] = ()
    denoising_steps: int = 0  # network steps of one loop, for the metric


@bentoml.service(
    name="elbo_serve",
    # BentoML answers 504 past the timeout (with our RequestTimeout: see the end of the module)
    traffic={"timeout": SETTINGS.request_timeout_s, "max_concurrency": SETTINGS.max_concurrency},
    workers=SETTINGS.workers,
)
class ElboServe:
    def __init__(self) -> None:
        # Heavy imports here so that importing the module (bentoml build, the arbiter) stays
        # cheap, and prometheus_client is first imported inside a worker, where BentoML has
        # set PROMETHEUS_MULTIPROC_DIR.
        import torch

        from models.core.checkpoints import load_checkpoint, require_model_card
        from models.nn.acceleration import Acceleration, accelerate
        from service import metrics, runners
        from service.batching import KeyedBatcher
        from service.costs import ModelCosts
        from service.progress import ProgressStore

        # Read again here (not only at import) so each new instance sees the environment.
        settings = self.settings = Settings.from_env()
        self.device = settings.resolve_device()
        if (threads := settings.threads_per_call(self.device)) is not None:
            torch.set_num_threads(threads)
        self.metrics, self.runners = metrics, runners
        self.checkpoints = {}
        for name, directory in (
            ("vae", settings.vae_checkpoint),
            ("ddpm", settings.ddpm_checkpoint),
        ):
            start = time.perf_counter()
            self.checkpoints[name] = require_model_card(load_checkpoint(directory, self.device))
            metrics.CHECKPOINT_LOAD_SECONDS.labels(name).set(time.perf_counter() - start)
            logger.info("loaded %s from %s on %s", name, directory, self.device)
        if (acceleration := settings.acceleration(self.device)) != Acceleration():
            for checkpoint in self.checkpoints.values():
                accelerate(checkpoint.model, acceleration)
            logger.info("networks run with %s", acceleration.name)
        self.vae = self.checkpoints["vae"].model
        self.ddpm = self.checkpoints["ddpm"].model
        # GFLOP of each network evaluation, counted once on the loaded weights.
        self.costs = {
            name: ModelCosts.of(checkpoint.kind, checkpoint.model)
            for name, checkpoint in self.checkpoints.items()
        }
        self.ceiling = settings.request_ceiling(self.device)
        logger.info(
            "GFLOP per image and network evaluation: %s; synchronous requests up to %s GFLOP",
            {name: costs.gflop_per_evaluation for name, costs in self.costs.items()},
            f"{self.ceiling.gflop:,.0f}" if self.ceiling.gflop else "any",
        )
        self.max_batch = settings.max_batch_images(self.device)
        self.chunk_rows = settings.chunk_rows(self.device)
        self.bound_call_rows = settings.rows_per_bound_call(self.device)
        lanes = settings.lanes(self.device)
        if settings.batching:
            wait_s = settings.batch_wait_ms / 1000
            self.batcher = KeyedBatcher(self.max_batch, wait_s, self._observe, lanes)
        else:  # one request per model call, sent at once
            self.batcher = KeyedBatcher(1, 0.0, self._observe, lanes)
        logger.info("%d model lanes, %d torch threads each", lanes, torch.get_num_threads())
        self.progress = ProgressStore(settings.progress_dir)
        self._calibrations: dict[tuple[str, str, str], tuple[dict, Any]] = {}
        self._ready = False

    # Health -------------------------------------------------------------------------------

    @bentoml.on_startup
    async def _start_warm_up(self) -> None:
        # In the background, so /livez answers while /readyz waits for the first batch.
        self._warm_up_task = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        start = time.perf_counter()
        try:
            for model in ("vae", "ddpm"):
                sampled = await self._sample(SampleRequest(model=model, n=1, steps=2, seed=0))
                method = "elbo" if model == "vae" else "vlb_mc"
                await self._likelihood(
                    LikelihoodRequest(model=model, images=sampled.images, method=method)
                )
        except Exception:
            logger.exception("warm-up failed; /readyz stays 503")
            return
        self.metrics.WARMUP_SECONDS.set(time.perf_counter() - start)
        self._ready = True
        logger.info("warm-up done in %.1f s", time.perf_counter() - start)

    def __is_ready__(self) -> bool:
        return self._ready

    # Endpoints ----------------------------------------------------------------------------

    @bentoml.api(input_spec=SampleRequest)
    @answers_request_errors
    async def sample(self, **fields: Any) -> SampleResponse:
        """Draw `n` images; the same `seed` gives byte-identical images. Past the request-cost
        ceiling (many images, steps or ancestral sampling on a CPU): 413, use /sample_task."""
        request = SampleRequest.model_construct(**fields)
        work = self._sample_work(request)
        self._refuse_past_ceiling(request.model, work, "n", _as_task("sample_task"))
        return await self._sample(request)

    @bentoml.api(input_spec=LikelihoodRequest)
    @answers_request_errors
    async def likelihood(self, **fields: Any) -> LikelihoodResponse:
        """Per image, the bound on -log p(x) in nats and bits/dim, term by term. Past the
        request-cost ceiling (many images, large k, vlb_exact): 413, use /likelihood_task."""
        request = LikelihoodRequest.model_construct(**fields)
        work = Work("likelihood", len(request.images), request.method, request.k)
        self._refuse_past_ceiling(request.model, work, "images", _as_task("likelihood_task"))
        return await self._likelihood(request)

    @bentoml.api(input_spec=ScoreRequest)
    @answers_request_errors
    async def score(self, **fields: Any) -> ScoreResponse:
        """Per image, the anomaly score, the calibrated threshold for `fpr`, the verdict and
        the score's percentile among held-out normal images."""
        return await self._score(ScoreRequest.model_construct(**fields))

    @bentoml.api(input_spec=EncodeRequest)
    @answers_request_errors
    async def encode(self, **fields: Any) -> EncodeResponse:
        """VAE: posterior mean and log-variance. DDPM: DDIM-inverted x_T and how well it
        decodes back."""
        request = EncodeRequest.model_construct(**fields)
        work = Work("encode", len(request.images), steps=request.steps)
        cost = self._refuse_past_ceiling(request.model, work, "images", FEWER_IMAGES)
        x = self._images(request.images, request.model)
        job = self.runners.ImagesJob(x, request.seed)
        if request.model == "vae":
            key = BatchKey("vae", "encode", (request.sample,))
            run = functools.partial(self.runners.vae_encode, self.vae, draw_sample=request.sample)
            out = await self.batcher.submit(key, run, job, job.rows, cost.gflop)
            return EncodeResponse(
                model="vae",
                means=out["mean"].tolist(),
                logvars=out["logvar"].tolist(),
                samples=out["sample"].tolist() if request.sample else [],
            )
        key = BatchKey("ddpm", "encode", (request.steps,), 2 * request.steps)
        run = functools.partial(
            self.runners.ddpm_encode, self.ddpm, steps=request.steps, chunk_rows=self.chunk_rows
        )
        out = await self.batcher.submit(key, run, job, job.rows, cost.gflop)
        errors = (out["reconstruction"].int() - x.int()).abs().flatten(1).amax(dim=1)
        return EncodeResponse(
            model="ddpm",
            latents=out["latent"].tolist(),
            steps=request.steps,
            reconstruction_rmse=out["rmse"].tolist(),
            reconstruction_max_pixel_error=errors.tolist(),
        )

    @bentoml.api(input_spec=DecodeRequest)
    @answers_request_errors
    async def decode(self, **fields: Any) -> DecodeResponse:
        """Latents (VAE z, or DDPM x_T from /encode) -> images."""
        from models.core.pixels import NonFiniteError
        from service.imaging import decode_latents, images_payload

        request = DecodeRequest.model_construct(**fields)
        work = Work("decode", len(request.latents), steps=request.steps)
        cost = self._refuse_past_ceiling(request.model, work, "latents", FEWER_IMAGES)
        if request.model == "vae":
            z = decode_latents(request.latents, (self.vae.config.latent_dim,), MAX_LATENT_ABS)
            key, run = (
                BatchKey("vae", "decode"),
                functools.partial(self.runners.vae_decode, self.vae, chunk_rows=self.chunk_rows),
            )
        else:
            z = decode_latents(request.latents, self.ddpm.image_shape, MAX_LATENT_ABS)
            key = BatchKey("ddpm", "decode", (request.steps,), request.steps)
            run = functools.partial(
                self.runners.ddpm_decode, self.ddpm, steps=request.steps, chunk_rows=self.chunk_rows
            )
        job = self.runners.ImagesJob(z)
        try:
            images = await self.batcher.submit(key, run, job, len(z), cost.gflop)
        except NonFiniteError as error:
            # Each image is a deterministic function of its latent alone, and these passed
            # validation: the client's values are to blame, so a 4xx that names them.
            raise NonFiniteResultError(
                f"latents[{error.rows[0]}]",
                "decoding this latent gave NaN or infinite pixel values; the model cannot "
                "decode it (latents from /encode or N(0, I) draws decode)",
            ) from error
        self.metrics.IMAGES_GENERATED.labels(request.model, "decode").inc(len(images))
        return DecodeResponse(model=request.model, **images_payload(images, request.output))

    @bentoml.api
    async def models(self) -> ModelsResponse:
        """The loaded models: kind, checkpoint directory, device, config and model card."""
        from models.core.config import config_to_dict

        return ModelsResponse(
            models={
                name: ModelInfo(
                    kind=checkpoint.kind,
                    checkpoint=str(checkpoint.directory),
                    device=self.device,
                    config=config_to_dict(checkpoint.model.config),
                    card=checkpoint.card,
                )
                for name, checkpoint in self.checkpoints.items()
            }
        )

    if SETTINGS.noop_endpoint:

        @bentoml.api(input_spec=ScoreRequest)
        async def noop(self, **fields: Any) -> dict[str, int]:
            """Benchmark aid (ELBO_SERVE_NOOP_ENDPOINT=true): validates a /score body and
            answers without work, so the HTTP benchmark can measure the framework's ceiling."""
            return {"images": len(fields["images"])}

    # Long work as tasks: POST .../submit, GET .../status?task_id=, GET .../get?task_id= ----

    @bentoml.task(input_spec=SampleRequest)
    @answers_request_errors
    async def sample_task(self, ctx: bentoml.Context, **fields: Any) -> SampleResponse:
        """/sample as a background task (for ancestral sampling); progress at /task_progress.
        No cost ceiling: it yields the model to cheaper requests between network calls."""
        request = SampleRequest.model_construct(**fields)
        return await self._sample(request, self._task_reporter(ctx))

    @bentoml.task(input_spec=LikelihoodRequest)
    @answers_request_errors
    async def likelihood_task(self, ctx: bentoml.Context, **fields: Any) -> LikelihoodResponse:
        """/likelihood as a background task (for vlb_exact); progress at /task_progress.
        No cost ceiling: it yields the model to cheaper requests between network calls."""
        request = LikelihoodRequest.model_construct(**fields)
        return await self._likelihood(request, self._task_reporter(ctx))

    @bentoml.api(input_spec=ProgressRequest)
    @answers_request_errors
    async def task_progress(self, **fields: Any) -> ProgressResponse:
        """Denoising steps (or bound rows) done so far by a submitted task."""
        task_id = fields["task_id"]
        record = self.progress.read(task_id)
        if record is None:
            raise RequestError("task_id", f"no progress recorded for task {task_id!r} (yet)")
        done, total = record
        return ProgressResponse(task_id=task_id, done=done, total=total, fraction=done / total)

    # The work behind the endpoints --------------------------------------------------------

    def _cost(self, model: str, work: Work) -> Cost:
        return self.costs[model].estimate(work)

    def _refuse_past_ceiling(self, model: str, work: Work, field: str, instead: str) -> Cost:
        """The work's cost, or a 413 naming it, the ceiling and ``instead``."""
        cost = self._cost(model, work)
        refuse_past_ceiling(cost, self.ceiling, field, instead)
        return cost

    @staticmethod
    def _sample_work(request: SampleRequest) -> Work:
        return Work("sample", request.n, steps=request.steps, sampler=request.sampler)

    def _task_reporter(self, ctx: bentoml.Context):
        task_id = getattr(ctx.request.state, "task_id", None)
        return self.progress.reporter(task_id) if task_id else None

    def _images(self, items: list[Any], model: str):
        from service.imaging import decode_images

        shape = self.vae_image_shape if model == "vae" else self.ddpm.image_shape
        return decode_images(items, shape)

    @property
    def vae_image_shape(self) -> tuple[int, int, int]:
        config = self.vae.config
        return (config.image_channels, config.image_size, config.image_size)

    async def _sample(self, request: SampleRequest, progress=None) -> SampleResponse:
        from service.imaging import images_payload

        seed = request.seed if request.seed is not None else secrets.randbits(63)
        job = self.runners.SampleJob(request.n, seed, progress)
        if request.model == "vae":
            key = BatchKey("vae", "sample", (request.temperature, request.sample_pixels))
            run = functools.partial(
                self.runners.vae_sample,
                self.vae,
                temperature=request.temperature,
                sample_pixels=request.sample_pixels,
                chunk_rows=self.chunk_rows,
            )
            sampler, steps = None, None
        else:
            sampler = request.sampler
            steps = self.ddpm.diffusion.num_timesteps if sampler == "ancestral" else request.steps
            key = BatchKey("ddpm", "sample", (sampler, steps, request.eta), steps)
            run = functools.partial(
                self.runners.ddpm_sample,
                self.ddpm,
                sampler=sampler,
                steps=steps,
                eta=request.eta,
                chunk_rows=self.chunk_rows,
            )
        cost = self._cost(request.model, self._sample_work(request))
        images = await self.batcher.submit(key, run, job, request.n, cost.gflop)
        self.metrics.IMAGES_GENERATED.labels(request.model, sampler or "prior").inc(request.n)
        return SampleResponse(
            model=request.model,
            n=request.n,
            seed=seed,
            sampler=sampler,
            steps=steps,
            **images_payload(images, request.output),
        )

    async def _bound(self, model: str, method: str, k: int | None, job) -> dict[str, Any]:
        key = BatchKey(model, f"likelihood_{method}", (k,))
        bound = self.runners.vae_bound if model == "vae" else self.runners.ddpm_bound
        model_module = self.checkpoints[model].model
        run = functools.partial(
            bound, model_module, method=method, k=k, max_batch=self.bound_call_rows
        )
        cost = self._cost(model, Work("likelihood", job.rows, method, k))
        terms = await self.batcher.submit(key, run, job, job.rows, cost.gflop)
        for value in terms["total_bits_per_dim"].tolist():
            self.metrics.LIKELIHOOD_BITS_PER_DIM.labels(model, method).observe(value)
        return terms

    async def _likelihood(self, request: LikelihoodRequest, progress=None) -> LikelihoodResponse:
        x = self._images(request.images, request.model)
        job = self.runners.ImagesJob(x, request.seed, progress)
        terms = await self._bound(request.model, request.method, request.k, job)
        names = [name for name in ImageBound.model_fields if name in terms]
        columns = {name: terms[name].tolist() for name in names}
        results = [
            ImageBound(**{name: columns[name][i] for name in names}) for i in range(job.rows)
        ]
        return LikelihoodResponse(
            model=request.model,
            method=request.method,
            k=request.k,
            seed=request.seed,
            results=results,
        )

    async def _score(self, request: ScoreRequest) -> ScoreResponse:
        from service.scoring import scores, threshold_for

        calibrated = self._calibration(request.model, request.method, request.correction)
        k = self._score_k(request, calibrated.k)
        work = Work("likelihood", len(request.images), request.method, k)
        self._refuse_past_ceiling(request.model, work, "images", SCORE_INSTEAD)
        threshold = threshold_for(calibrated.calibration, request.fpr)
        x = self._images(request.images, request.model)
        terms = await self._bound(
            request.model, request.method, k, self.runners.ImagesJob(x, request.seed)
        )
        score, png = scores(terms["total_bits_per_dim"], x, request.correction)
        flagged = score > threshold
        percentiles = calibrated.calibration.percentile(score)
        self.metrics.IMAGES_SCORED.labels(request.model, request.method).inc(len(score))
        self.metrics.ANOMALIES_FLAGGED.labels(request.model, request.method).inc(int(flagged.sum()))
        results = [
            ImageScore(
                score=score[i],
                bits_per_dim=float(terms["total_bits_per_dim"][i]),
                png_bits_per_dim=png[i],
                is_anomaly=bool(flagged[i]),
                percentile=percentiles[i],
            )
            for i in range(len(score))
        ]
        return ScoreResponse(
            model=request.model,
            method=request.method,
            k=k,
            correction=request.correction,
            fpr=request.fpr,
            threshold=threshold,
            calibration_source=calibrated.calibration.source,
            calibration_images=len(calibrated.calibration.normal_scores),
            results=results,
        )

    def _calibration(self, model: str, method: str, correction: str):
        """The card's calibration, built once per card rather than per request."""
        from service.scoring import calibration_for

        card = self.checkpoints[model].card
        key = (model, method, correction)
        cached_card, calibrated = self._calibrations.get(key, (None, None))
        if cached_card is not card:
            calibrated = calibration_for(card, model, method, correction)
            self._calibrations[key] = (card, calibrated)
        return calibrated

    @staticmethod
    def _score_k(request: ScoreRequest, calibrated_k: int | None) -> int | None:
        """The k the calibration used: scores with another k are not comparable."""
        if request.method not in K_RANGE:
            return None
        k = calibrated_k if calibrated_k is not None else DEFAULT_K[request.method]
        if request.k is not None and request.k != k:
            raise RequestError(
                "k", f"the {request.method} calibration used k={k}; leave k out or pass {k}"
            )
        return k

    def _observe(self, key: BatchKey, items: int, seconds: float) -> None:
        self.metrics.observe_batch(key.model, key.operation, items, seconds)
        if key.denoising_steps:
            self.metrics.DENOISING_STEPS.labels(key.operation).inc(key.denoising_steps)
        self.metrics.observe_cuda_memory(self.device)


# Added first, so it runs first: without a valid key (when keys are set) nothing else runs.
ElboServe.add_asgi_middleware(
    ApiKeys,
    keys=SETTINGS.api_keys,
    open_paths=() if SETTINGS.auth_health else HEALTH_PATHS,
)
# A body over the limit is refused before anything reads it.
ElboServe.add_asgi_middleware(BodySizeLimit, max_bytes=SETTINGS.max_body_bytes)
# Uploaded PNG files and GET /models, translated before BentoML parses the request.
ElboServe.add_asgi_middleware(MultipartImages)
ElboServe.add_asgi_middleware(GetModels)
# /docs.json: BentoML's OpenAPI document, corrected to what the service answers.
ElboServe.add_asgi_middleware(
    PublishedContract, document=lambda: published_document(ElboServe.openapi_spec.asdict())
)
# BentoML 1.4.39's timeout middleware keeps every answered request's context for the whole
# timeout (RSS 478 -> 970 MiB in a 10-minute soak); ours releases it.
use_leak_free_timeout()
# BentoML logs its own 400s (schema violations) at ERROR with a traceback; ours are one line.
use_one_line_client_error_logs()
