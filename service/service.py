"""The elbo-serve BentoML service: thin endpoints over the served models.

Every model in the model repository (``ELBO_SERVE_MODEL_DIR``, default ``checkpoints/``) is
served under its directory's name; each endpoint validates its body (schemas), and
:class:`service.calls.ModelCalls` resolves the name, lets the model's kind complete the
options, batches the job with concurrent ones (runners) and converts the result back. Long
work also has a task form (``/sample_task``, ``/likelihood_task``, ``/score_task``: submit,
status, get) with progress at ``/task_progress``. Every job carries its estimated cost
(costs): the batcher serves cheaper work first, and a synchronous endpoint answers 413 past
the request-cost ceiling, pointing to the task form. A web page for people is mounted at
``/ui`` (service/ui.py).

Run from the repository root: ``bentoml serve`` (declared in pyproject.toml) or ``make serve``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from service.errors import answers_request_errors
from service.http_adapters import install_http_adapters
from service.schemas import (
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    LikelihoodRequest,
    LikelihoodResponse,
    ModelsResponse,
    ProgressRequest,
    ProgressResponse,
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings
from service.ui import PREFIX as UI_PREFIX
from service.ui import ui_app

logger = logging.getLogger("elbo_serve")
# Server limits are fixed when the service class is declared; the rest is read per instance.
SETTINGS = Settings.from_env()


# The web page (static files, and the sample grids the model cards name), beside the endpoints.
@bentoml.asgi_app(ui_app(SETTINGS.served_directories), path=UI_PREFIX, name="ui")
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
        from service import metrics
        from service.calls import ModelCalls
        from service.tasks import open_store
        from service.tasks.worker import TaskWorker

        # Read again here (not only at import) so each new instance sees the environment.
        settings = Settings.from_env()
        self.device = settings.resolve_device()
        self.metrics = metrics
        self.calls = ModelCalls.from_settings(settings, self.device, metrics, self._observe)
        handlers = {
            "sample_task": task_handler(SampleRequest, self.calls.sample),
            "likelihood_task": task_handler(LikelihoodRequest, self.calls.likelihood),
            "score_task": task_handler(ScoreRequest, self.calls.score),
        }
        store = open_store(settings.task_store_config())
        self.tasks = TaskWorker(store, handlers, settings.task_concurrency, metrics)
        self._ready = False

    # Health -------------------------------------------------------------------------------

    @bentoml.on_startup
    async def _start_warm_up(self) -> None:
        # In the background, so /livez answers while /readyz waits for the first batch.
        self._warm_up_task = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        """One short sample and one default bound of it, per served model."""
        start = time.perf_counter()
        try:
            for name, served in self.calls.repository.items():
                fewest_steps = {"steps": 2} if "steps" in served.kind.sample_options else {}
                request = SampleRequest(model=name, n=1, seed=0, **fewest_steps)
                sampled = await self.calls.sample(request)
                await self.calls.likelihood(LikelihoodRequest(model=name, images=sampled.images))
        except Exception:
            logger.exception("warm-up failed; /readyz stays 503")
            return
        self.metrics.WARMUP_SECONDS.set(time.perf_counter() - start)
        self._ready = True
        # Warm: take tasks from the store from now on.
        self._task_loop = asyncio.get_running_loop().create_task(self.tasks.run())
        logger.info("warm-up done in %.1f s", time.perf_counter() - start)

    @bentoml.on_shutdown
    async def _stop_tasks(self) -> None:
        # A task stopped here is run again elsewhere once its lease lapses.
        if loop := getattr(self, "_task_loop", None):
            loop.cancel()
        for running in list(self.tasks.running):
            running.cancel()

    def __is_ready__(self) -> bool:
        return self._ready

    # Endpoints ----------------------------------------------------------------------------

    @bentoml.api(input_spec=SampleRequest)
    @answers_request_errors
    async def sample(self, **fields: Any) -> SampleResponse:
        """Draw `n` images; the same `seed` gives byte-identical images. Past the request-cost
        ceiling (many images, steps or ancestral sampling on a CPU): 413, use /sample_task."""
        return await self.calls.sample(SampleRequest.model_construct(**fields))

    @bentoml.api(input_spec=LikelihoodRequest)
    @answers_request_errors
    async def likelihood(self, **fields: Any) -> LikelihoodResponse:
        """Per image, the bound on -log p(x) in nats and bits/dim, term by term. Past the
        request-cost ceiling (many images, large k, vlb_exact): 413, use /likelihood_task."""
        return await self.calls.likelihood(LikelihoodRequest.model_construct(**fields))

    @bentoml.api(input_spec=ScoreRequest)
    @answers_request_errors
    async def score(self, **fields: Any) -> ScoreResponse:
        """Per image, the anomaly score, the calibrated threshold for `fpr`, the verdict and
        the score's percentile among held-out normal images. Past the request-cost ceiling
        (many images, a large k, a Likelihood Regret of many steps): 413, use /score_task."""
        return await self.calls.score(ScoreRequest.model_construct(**fields))

    @bentoml.api(input_spec=EncodeRequest)
    @answers_request_errors
    async def encode(self, **fields: Any) -> EncodeResponse:
        """Images -> latents. VAE: posterior mean and log-variance. DDPM: DDIM-inverted x_T
        and how well it decodes back."""
        return await self.calls.encode(EncodeRequest.model_construct(**fields))

    @bentoml.api(input_spec=DecodeRequest)
    @answers_request_errors
    async def decode(self, **fields: Any) -> DecodeResponse:
        """Latents (VAE z, or DDPM x_T from /encode) -> images."""
        return await self.calls.decode(DecodeRequest.model_construct(**fields))

    @bentoml.api
    async def models(self) -> ModelsResponse:
        """The served models: kind, image shape, latent shape, methods, samplers, options with
        their limits, checkpoint directory, device, config and model card."""
        return self.calls.models(self.device)

    def describe_models(self) -> dict[str, dict[str, Any]]:
        """GET /models' description of each served model, as JSON: the published contract
        states each model's rules from it (service/openapi.py)."""
        return self.calls.models(self.device).model_dump(mode="json")["models"]

    if SETTINGS.noop_endpoint:

        @bentoml.api(input_spec=ScoreRequest)
        async def noop(self, **fields: Any) -> dict[str, int]:
            """Benchmark aid (ELBO_SERVE_NOOP_ENDPOINT=true): validates a /score body and
            answers without work, so the HTTP benchmark can measure the framework's ceiling."""
            return {"images": len(fields["images"])}

    # Long work as tasks: POST .../submit, GET .../status|get?task_id=, PUT .../cancel, and
    # POST /task_progress, answered from the task store by any replica (service/tasks/routes.py,
    # installed below); these two declare the routes' request schemas in the published
    # contract and run one request at once, as the synchronous form did.

    @bentoml.task(input_spec=SampleRequest)
    @answers_request_errors
    async def sample_task(self, **fields: Any) -> SampleResponse:
        """/sample as a background task (for ancestral sampling); progress at /task_progress.
        No cost ceiling: it yields the model to cheaper requests between network calls."""
        request = SampleRequest.model_construct(**fields)
        return await self.calls.sample(request, synchronous=False)

    @bentoml.task(input_spec=LikelihoodRequest)
    @answers_request_errors
    async def likelihood_task(self, **fields: Any) -> LikelihoodResponse:
        """/likelihood as a background task (for vlb_exact); progress at /task_progress.
        No cost ceiling: it yields the model to cheaper requests between network calls."""
        request = LikelihoodRequest.model_construct(**fields)
        return await self.calls.likelihood(request, synchronous=False)

    @bentoml.task(input_spec=ScoreRequest)
    @answers_request_errors
    async def score_task(self, **fields: Any) -> ScoreResponse:
        """/score as a background task (for a Likelihood Regret of many images or many steps,
        or a costly bound); progress at /task_progress. No cost ceiling: it yields the model
        to cheaper requests between network calls."""
        request = ScoreRequest.model_construct(**fields)
        return await self.calls.score(request, synchronous=False)

    @bentoml.api(input_spec=ProgressRequest)
    async def task_progress(self, **fields: Any) -> ProgressResponse:
        """Denoising steps (or bound rows) done so far by a submitted task (answered from the
        task store before this runs)."""
        raise RuntimeError("answered by service.tasks.routes.TaskRoutes")

    def _observe(self, key, items: int, seconds: float) -> None:
        self.metrics.observe_batch(key.model, key.operation, items, seconds)
        if key.denoising_steps:
            self.metrics.DENOISING_STEPS.labels(key.model, key.operation).inc(key.denoising_steps)
            rows = items * key.denoising_steps
            self.metrics.DENOISING_ROWS.labels(key.model, key.operation).inc(rows)
        self.metrics.observe_cuda_memory(self.device)


def task_handler(schema, call):
    """A task kind's work for the worker loop: the stored body -> the answer that the
    synchronous endpoint would give (a 4xx for a bad value, as there)."""
    from service.tasks.store import Result

    @answers_request_errors
    async def run(body: bytes, progress) -> Any:
        return await call(schema.model_validate_json(body), progress, synchronous=False)

    run.__name__ = schema.__name__  # for the log line of a 4xx

    async def handle(body: bytes, progress) -> Result:
        answer = await run(body, progress)
        if isinstance(answer, JSONResponse):
            return Result(answer.status_code, bytes(answer.body))
        return Result(200, answer.model_dump_json().encode())

    return handle


TASK_REQUESTS = {
    "sample_task": SampleRequest,
    "likelihood_task": LikelihoodRequest,
    "score_task": ScoreRequest,
}
# API keys, body limit, PNG uploads, GET /models, the corrected /docs.json, the task routes,
# the leak-free timeout and one-line client-error logs (service/http_adapters.py).
install_http_adapters(ElboServe, SETTINGS, TASK_REQUESTS)
