"""Fuzz the service against its published contract (/docs.json) with schemathesis.

    python -m load_tests.fuzz --max-examples 200 --out runs/fuzz.json   # starts bentoml serve
    python -m load_tests.fuzz --url http://127.0.0.1:3000 --max-examples 50

Every operation of the OpenAPI document is sent ``--max-examples`` generated requests of each
kind schemathesis makes: positive (bodies and parameters valid by the schema) and negative
(invalid by it); then ``--stateful-examples`` scenarios of its stateful phase chain requests
along the links it infers (a task's ``/submit`` -> its ``status``, ``get``, ``cancel``). Each
response must pass every check schemathesis has (``st run --checks all``): not a 5xx; a
documented status code, content type, headers and body; a schema-valid request accepted (no
400), a schema-violating one rejected; a task id answered only where the links say. The
generation is seeded and never shrinks, so a run's size is fixed and the same seed sends the
same requests.

Two things steer generation (the suite's bounded run, tests/service/test_contract.py, says so):

- Cost caps, because a schema-valid request can take minutes on a CPU: DDIM ``steps`` at most
  4 (also for DDPM ``ancestral`` sampling, whose default is all 1,000 steps), ``n`` at most 2,
  ``k`` at most 8 (not /score's, which is the calibration's), and the DDPM ``vlb_exact`` bound
  (1,000 network calls per image) becomes ``vlb_mc``. The expensive paths themselves are
  covered by the endpoint tests.
- Real images: no JSON Schema can say that a string is a PNG of the model's size, so every
  image of a positive request is a real one (a base64 PNG or a nested array; uploads PNG
  files); half of them also carry valid-shape latents of generated floats, or the id of a task
  that exists, to reach the models. (``st run`` itself sends random strings and a 1x1 PNG as
  images: the 400s it reports for them are the one rejection docs/http_api.md lists as
  deliberate.)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

# Cost caps: the most of each option a generated request may ask for.
MAX_STEPS = 4
MAX_N = 2
MAX_K = 8
MAX_LATENT_ABS = 1000.0  # service.schemas.MAX_LATENT_ABS, the published bound
IMAGE_SHAPE = (1, 28, 28)  # the bundled checkpoints'
VAE_LATENT_DIM = 32
# What a positive case carries: as generated, or with real images / latents / task ids.
AS_GENERATED, REAL_PNGS, REAL_ARRAYS = "as generated", "real PNGs", "real arrays"
CHOICES = (AS_GENERATED, REAL_PNGS, AS_GENERATED, REAL_ARRAYS)
# One finished task of each kind, submitted before the run.
TASKS = {
    "sample_task": {"model": "vae", "n": 1, "seed": 0},
    "likelihood_task": {"model": "vae", "images": [[[0] * 28] * 28]},
    "score_task": {"model": "vae", "images": [[[0] * 28] * 28]},
}

Send = Callable[[dict[str, Any]], Any]  # requests-style kwargs -> an httpx or requests response


@dataclass
class Failure:
    operation: str
    mode: str
    status: int
    check: str
    message: str
    curl: str


@dataclass
class FuzzReport:
    seed: int
    max_examples: int
    examples: Counter = field(default_factory=Counter)  # requests sent, per operation
    statuses: Counter = field(default_factory=Counter)  # responses, per status code
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (task route, id) accepted

    def count(self, label: str, case: Any, response: Any) -> None:
        """One more request of ``label`` answered ``response``; a task accepted is noted."""
        self.examples[label] += 1
        self.statuses[response.status_code] += 1
        route, _, action = case.operation.path.strip("/").partition("/")
        if action == "submit" and response.status_code == 200:
            self.submitted.append((route, response.json()["task_id"]))

    @property
    def total(self) -> int:
        return sum(self.examples.values())

    def distinct_failures(self) -> dict[tuple[str, int, str], int]:
        """(operation, status, check) -> how many requests failed that way."""
        return Counter((f.operation, f.status, f.check) for f in self.failures)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_examples": self.max_examples,
            "seconds": round(self.seconds, 1),
            "requests": self.total,
            "requests_per_operation": dict(sorted(self.examples.items())),
            "responses_per_status": {str(code): n for code, n in sorted(self.statuses.items())},
            "failures": [asdict(failure) for failure in self.failures],
        }

    def summary(self) -> str:
        lines = [
            f"{self.total} requests over {len(self.examples)} operations "
            f"(seed {self.seed}, {self.max_examples} examples per operation and mode) "
            f"in {self.seconds:.0f} s: {len(self.failures)} failed; responses by status: "
            + ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        ]
        for (operation, status, check), count in sorted(self.distinct_failures().items()):
            first = next(
                f
                for f in self.failures
                if (f.operation, f.status, f.check) == (operation, status, check)
            )
            lines.append(f"  {count} x {operation} -> {status}: {check}\n    {first.curl}")
        return "\n".join(lines)


def sample_inputs(count: int = 2, seed_value: int = 0) -> dict[str, list[Any]]:
    """Valid images as base64 PNGs and as nested arrays (random pixels: any 8-bit image is
    a valid input)."""
    from PIL import Image

    rng = np.random.default_rng(seed_value)
    pixels = rng.integers(0, 256, size=(count, *IMAGE_SHAPE), dtype=np.uint8)
    pngs = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[0], mode="L").save(buffer, format="PNG")
        pngs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return {REAL_PNGS: pngs, REAL_ARRAYS: pixels.tolist()}


STEPS_PATHS = ("/sample", "/encode", "/decode")  # operations whose bodies take `steps`
DDPM_SAMPLERS = (None, "ddim", "ancestral")


def affordable(case: Any) -> None:
    """Cap a generated case's cost in place (see the module docstring)."""
    body = case.body
    if not isinstance(body, dict):
        return
    caps = [("steps", MAX_STEPS), ("n", MAX_N)]
    # /score (and its task form, /score_task) takes only its calibration's k
    if not case.operation.path.startswith("/score"):
        caps.append(("k", MAX_K))
    with _keeping_mode(case):
        for name, most in caps:
            if _is_int(body.get(name)) and body[name] > most:
                body[name] = most
        if body.get("model") == "ddpm" and body.get("method") == "vlb_exact":
            body["method"] = "vlb_mc"
        takes_k = case.operation.path.startswith("/likelihood")  # /score: the calibration's
        if takes_k and body.get("k") is None and _takes_k(body):
            body["k"] = MAX_K  # not the defaults: 100 (iwae), 20 (vlb_mc)
        takes_steps = case.operation.path.startswith(STEPS_PATHS)
        ddpm_steps = body.get("model") == "ddpm" and body.get("sampler") in DDPM_SAMPLERS
        if takes_steps and ddpm_steps and body.get("steps") is None:
            body["steps"] = MAX_STEPS  # left out or null: 50 (DDIM), 1,000 (ancestral)


def _takes_k(body: dict[str, Any]) -> bool:
    """Whether the body's bound (of the bundled models) takes k."""
    method = body.get("method")
    return method == "iwae" or (body.get("model") == "ddpm" and method in (None, "vlb_mc"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def with_real_inputs(
    case: Any,
    choice: str,
    value: float,
    inputs: dict[str, list[Any]],
    task_ids: dict[str, str],
) -> Any:
    """``case`` with real images (always: see the module docstring), and unless ``choice``
    is AS_GENERATED latents filled with ``value`` or the id of a task of the operation's own
    kind (``task_ids``: task route -> id; a task is answered only at its own kind's routes)."""
    body = case.body
    if isinstance(body, dict) and "images" in body:
        images = inputs[REAL_ARRAYS if choice == REAL_ARRAYS else REAL_PNGS]
        images = images[: 1 + int(abs(value)) % 2]
        if case.media_type == "multipart/form-data":  # uploaded files
            _upload(case, inputs[REAL_PNGS][: len(images)])
        else:
            body["images"] = images
    if choice == AS_GENERATED:
        return case
    if isinstance(body, dict):
        if "latents" in body:
            shape = (VAE_LATENT_DIM,) if body.get("model") == "vae" else IMAGE_SHAPE
            body["latents"] = [np.full(shape, value).tolist()]
        if "task_id" in body and task_ids:
            body["task_id"] = next(iter(task_ids.values()))
    task_id = task_ids.get(case.operation.path.split("/")[1])
    if task_id and isinstance(case.query, dict) and "task_id" in case.query:
        case.query["task_id"] = task_id
    return case


def _upload(case: Any, pngs: list[str]) -> None:
    """The case's uploaded ``images`` parts replaced by real PNG files."""
    from schemathesis.transport.serialization import Binary

    with _keeping_mode(case):
        case.body["images"] = [Binary(base64.b64decode(png)) for png in pngs]


@contextlib.contextmanager
def _keeping_mode(case: Any) -> Iterator[None]:
    """Edit a multipart case's body without changing its generation mode. schemathesis
    re-validates a modified body when its checks read the case and counts any body holding
    files as invalid, which would turn a valid upload into a 'negative' case; the edits here
    (real PNG files, smaller options) keep a valid body valid."""
    if case.media_type != "multipart/form-data":
        yield
        return
    meta = case.meta
    mode, components = meta.generation.mode, dict(meta.components)
    yield
    meta = case.meta  # re-validated here
    meta.generation.mode = mode
    meta.components.update(components)


def fuzz(
    spec: dict[str, Any],
    send: Send,
    *,
    max_examples: int,
    seed_value: int = 0,
    base_url: str = "http://testserver",
    task_ids: dict[str, str] | None = None,
    stateful_examples: int = 0,
    stateful_steps: int = 5,
    log: Callable[[str], None] = lambda line: None,
) -> FuzzReport:
    """Send every operation of ``spec`` its generated requests through ``send``, then
    ``stateful_examples`` stateful scenarios of up to ``stateful_steps`` linked requests;
    check each response against the contract. Failures are recorded, not raised, so one run
    finds all."""
    import schemathesis
    from schemathesis import GenerationMode

    report = FuzzReport(seed=seed_value, max_examples=max_examples)
    start = time.monotonic()
    real_inputs = st.builds(
        dict,
        choice=st.sampled_from(CHOICES),
        value=st.floats(-MAX_LATENT_ABS, MAX_LATENT_ABS),
        inputs=st.just(sample_inputs()),
        task_ids=st.just(dict(task_ids or {})),
    )
    schema = schemathesis.openapi.from_dict(spec)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=_label)
    for operation in operations:
        for mode in GenerationMode:
            cases = operation.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:
                cases = st.builds(
                    lambda case, extra: with_real_inputs(case, **extra), cases, real_inputs
                )
            began = time.monotonic()
            run = _runner(cases, send, base_url, report, f"{operation.label}", mode.value)
            try:
                run()
            except Unsatisfiable:  # nothing to negate: an operation without parameters
                pass
            except Exception as error:  # e.g. a definition schemathesis rejects, no answer
                failure = Failure(operation.label, mode.value, 0, type(error).__name__, "", "")
                failure.message = str(error)[:2000]
                report.failures.append(failure)
            log(f"{operation.label} {mode.value}: {time.monotonic() - began:.1f} s")
    if stateful_examples:
        began = time.monotonic()
        machine = _state_machine(schema, send, base_url, report, sample_inputs())
        try:
            machine.run(
                settings=settings(
                    max_examples=stateful_examples,
                    stateful_step_count=stateful_steps,
                    phases=[Phase.generate],
                    database=None,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                )
            )
        except Exception as error:  # failures are recorded; this is the run itself failing
            failure = Failure(STATEFUL, "stateful", 0, type(error).__name__, str(error)[:2000], "")
            report.failures.append(failure)
        log(f"{STATEFUL}: {time.monotonic() - began:.1f} s")
    report.seconds = time.monotonic() - start
    return report


STATEFUL = "stateful scenarios"


def _state_machine(
    schema: Any, send: Send, base_url: str, report: FuzzReport, inputs: dict[str, list[Any]]
) -> Any:
    """schemathesis' stateful phase (the links it infers between operations), sending through
    ``send`` with the same cost caps and real images, recording what the checks find."""
    from schemathesis.core.transport import Response

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def call(self, case: Any, **kwargs: Any) -> Any:
            affordable(case)
            with_real_inputs(case, REAL_PNGS, 0.0, inputs, {})
            response = send(case.as_transport_kwargs(base_url=base_url))
            report.count(STATEFUL, case, response)
            return Response.from_any(response)

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            recorder = getattr(self, "recorder", None)
            for failure in contract_failures(case, response, recorder):
                report.failures.append(_failure(STATEFUL, "stateful", case, response, failure))

    return seed(report.seed)(Machine)


def _failure(label: str, mode: str, case: Any, response: Any, failure: Exception) -> Failure:
    return Failure(
        operation=label,
        mode=mode,
        status=response.status_code,
        check=getattr(failure, "title", type(failure).__name__),
        message=str(failure)[:2000],
        curl=case.as_curl_command(headers=None)[:2000],
    )


def _runner(
    cases: Any, send: Send, base_url: str, report: FuzzReport, label: str, mode: str
) -> Callable[[], None]:
    """A Hypothesis test that sends each case and records what the contract finds wrong."""

    @settings(
        max_examples=report.max_examples,
        phases=[Phase.generate],  # no shrinking, no example database: a fixed size
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(report.seed)
    @given(cases)
    def run(case: Any) -> None:
        affordable(case)
        response = send(case.as_transport_kwargs(base_url=base_url))
        report.count(label, case, response)
        for failure in contract_failures(case, response):
            report.failures.append(_failure(label, mode, case, response, failure))

    return run


def contract_failures(case: Any, response: Any, recorder: Any = None) -> list[Exception]:
    """What is wrong with ``response`` to ``case`` by the contract, by every check
    schemathesis has (those of ``st run --checks all``): a 5xx; an undocumented status code,
    content type, header or body; a schema-valid request refused (a 400) or a schema-violating
    one accepted; a 405 without the documented ``Allow``; ``recorder``: the stateful phase's,
    for the checks that look at earlier requests."""
    from schemathesis.checks import CHECKS, is_check_class, load_all_checks

    load_all_checks()
    checks = [check for check in CHECKS.get_all() if not is_check_class(check)]
    try:
        case.validate_response(response, checks=checks, recorder=recorder)
    except BaseExceptionGroup as group:  # schemathesis' FailureGroup
        return list(group.exceptions)
    except AssertionError as failure:  # one failure, not grouped
        return [failure]
    return []


def as_httpx(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis' ``requests`` arguments as ``httpx`` ones (for an in-process test client):
    a raw body is ``content``, and form values that are not text are written as text, as
    ``requests`` (urllib3) writes them."""
    kwargs = {name: value for name, value in kwargs.items() if name != "cookies"}
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    if kwargs.get("files"):
        kwargs["files"] = [
            (name, (part[0], _as_text(part[1]), *part[2:])) for name, part in kwargs["files"]
        ]
    return kwargs


def _as_text(value: Any) -> bytes | str:
    return value if isinstance(value, bytes | str) else str(value)


def _label(operation: Any) -> str:
    return operation.label


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--url", help="A running service (loopback only); default: start bentoml serve.")
    add("--max-examples", type=int, default=100, help="Per operation and generation mode.")
    add("--seed", type=int, default=0, help="Hypothesis seed (same seed, same requests).")
    add("--out", type=Path, help="Write the report as JSON here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import requests

    from load_tests.serving import LOOPBACK_HOSTS, running_server, server_environment

    args = parse_args(argv)

    def fuzz_at(url: str) -> FuzzReport:
        spec = requests.get(f"{url}/docs.json", timeout=60).json()
        task_ids = {name: submit_task(requests, url, name, body) for name, body in TASKS.items()}

        def send(kwargs: dict[str, Any]) -> Any:
            return requests.request(**kwargs, timeout=600)

        return fuzz(
            spec,
            send,
            max_examples=args.max_examples,
            seed_value=args.seed,
            base_url=url,
            task_ids=task_ids,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )

    if args.url:
        from urllib.parse import urlsplit

        if urlsplit(args.url).hostname not in LOOPBACK_HOSTS:
            raise SystemExit(f"--url must be a loopback address, got {args.url}")
        report = fuzz_at(args.url.rstrip("/"))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="elbo-serve-fuzz-"))
        env = server_environment({}, scratch / "bentoml")
        with running_server(env, scratch / "server.log") as (url, _process):
            report = fuzz_at(url)
        print(f"server log: {scratch / 'server.log'}", file=sys.stderr)
    print(report.summary())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_json(), indent=1))
    return 1 if report.failures else 0


def submit_task(client: Any, url: str, name: str, body: dict[str, Any]) -> str:
    """Submit a cheap task and wait for it, so the task routes are also fuzzed with an id
    that exists; ``client``: ``requests`` or a test client (``.get``, ``.post``)."""
    task_id = client.post(f"{url}/{name}/submit", json=body).json()["task_id"]
    for _ in range(600):
        status = client.get(f"{url}/{name}/status", params={"task_id": task_id})
        if status.json()["status"] != "in_progress":
            break
        time.sleep(0.1)
    return task_id


if __name__ == "__main__":
    sys.exit(main())
