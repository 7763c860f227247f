"""Runs the elbo-serve image and checks what a user touches; exits non-zero on the first miss.

    python deploy/docker/image_test.py --image elbo-serve:cpu

It starts a container with its port published on 127.0.0.1 only, waits for the image's own
health check to say healthy, calls /readyz, /livez, /models, /sample (each served model),
/score (JSON and multipart upload), /metrics, checks the process runs as a non-root user that
cannot write the checkpoints, then stops the container with SIGTERM and requires a clean exit.
Only the standard library, so it runs from any Python 3.11.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

READY_TIMEOUT_S = 240


class ImageCheckError(Exception):
    """A check that failed; the message says which and what was seen."""


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ImageCheckError(
            f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout.strip()


def http(url: str, body: bytes | None = None, content_type: str = "application/json"):
    """(status, body bytes); a 4xx/5xx is returned, not raised, so the check can name it."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_json(base: str, path: str, payload: dict) -> dict:
    status, body = http(base + path, json.dumps(payload).encode())
    if status != 200:
        raise ImageCheckError(f"POST {path} {payload.get('model')}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_healthy(container: str) -> float:
    """Seconds until Docker's health check (the image's HEALTHCHECK on /readyz) says healthy."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container))
        if not state["Running"]:
            raise ImageCheckError(
                f"container exited with {state['ExitCode']}: {docker('logs', container)}"
            )
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - start
        if health == "unhealthy":
            raise ImageCheckError(f"health check failed; logs:\n{docker('logs', container)}")
        time.sleep(1)
    raise ImageCheckError(
        f"not healthy after {READY_TIMEOUT_S} s; logs:\n{docker('logs', container)}"
    )


def check_user_and_files(container: str) -> None:
    uid = docker("exec", container, "id", "-u")
    if uid == "0":
        raise ImageCheckError("the service runs as root")
    # Owner and mode, not a write attempt: they hold whether or not the root is mounted read-only.
    listing = docker("exec", container, "find", "/app", "-user", uid, "-o", "-perm", "/022")
    if listing:
        raise ImageCheckError(f"uid {uid} owns, or others may write, under /app:\n{listing}")
    print(f"ok   runs as uid {uid}; /app (code, checkpoints) is root's and not writable")


def check_health(base: str) -> None:
    for path in ("/readyz", "/livez"):
        status, body = http(base + path)
        if status != 200:
            raise ImageCheckError(f"GET {path}: HTTP {status}: {body[:200]!r}")
    print("ok   /readyz and /livez answer 200")


def served_models(base: str) -> dict[str, dict]:
    status, body = http(base + "/models")
    if status != 200:
        raise ImageCheckError(f"GET /models: HTTP {status}")
    models = json.loads(body)["models"]
    if not models:
        raise ImageCheckError("GET /models lists no model")
    print(f"ok   /models serves {', '.join(sorted(models))}")
    return models


def check_sample(base: str, models: dict[str, dict]) -> dict[str, bytes]:
    """One seeded sample per model; returns a PNG per model for the scoring checks."""
    pngs = {}
    for name in sorted(models):
        reply = post_json(base, "/sample", {"model": name, "n": 2, "seed": 0})
        images = reply.get("images") or []
        if len(images) != 2:
            raise ImageCheckError(f"/sample {name}: expected 2 images, got {len(images)}")
        png = base64.b64decode(images[0])
        if not png.startswith(b"\x89PNG"):
            raise ImageCheckError(f"/sample {name}: images[0] is not a PNG")
        pngs[name] = png
    print(f"ok   /sample draws PNGs from {len(pngs)} models")
    return pngs


def check_score(base: str, pngs: dict[str, bytes]) -> None:
    terms_status = {}
    for name, png in pngs.items():
        as_json = post_json(
            base, "/score", {"model": name, "images": [base64.b64encode(png).decode()]}
        )
        body, content_type = multipart({"model": name}, [("image.png", png)])
        status, raw = http(base + "/score", body, content_type)
        if status != 200:
            raise ImageCheckError(f"POST /score multipart {name}: HTTP {status}: {raw[:300]!r}")
        uploaded = json.loads(raw)
        scores = [reply["results"][0]["score"] for reply in (as_json, uploaded)]
        if scores[0] != scores[1]:
            raise ImageCheckError(f"/score {name}: JSON gave {scores[0]}, multipart {scores[1]}")
        # The term density: its scoring must run on what the image installs (no scipy).
        terms = {"model": name, "images": [base64.b64encode(png).decode()], "correction": "terms"}
        status, raw = http(base + "/score", json.dumps(terms).encode())
        if status not in (200, 409):  # 409: this model's card has no term density
            raise ImageCheckError(f"/score correction terms {name}: HTTP {status}: {raw[:300]!r}")
        terms_status[name] = status
    status, body = http(base + "/score", b'{"model": "no-such-model", "images": []}')
    if not 400 <= status < 500:
        raise ImageCheckError(f"/score with an unknown model: HTTP {status}, expected a 4xx")
    print(f"ok   /score by JSON and multipart agree for {len(pngs)} models; bad input is {status}")
    print(f"ok   /score correction terms answers {terms_status}")


def check_metrics(base: str, models: dict[str, dict]) -> None:
    status, body = http(base + "/metrics")
    text = body.decode()
    if status != 200:
        raise ImageCheckError(f"GET /metrics: HTTP {status}")
    for name in models:
        if not any(
            line.startswith("elbo_serve_images_scored_total{")
            and f'model="{name}"' in line
            and float(line.rsplit(" ", 1)[1]) > 0
            for line in text.splitlines()
        ):
            raise ImageCheckError(f"/metrics: no nonzero elbo_serve_images_scored_total for {name}")
    print("ok   /metrics counts the scored images of every model")


def stop(container: str) -> None:
    start = time.monotonic()
    docker("stop", "--time", "60", container)
    code = docker("inspect", "--format", "{{.State.ExitCode}}", container)
    if code != "0":
        raise ImageCheckError(f"after SIGTERM the container exited {code}, expected 0")
    print(f"ok   SIGTERM: exited 0 in {time.monotonic() - start:.1f} s")


def started(image: str, *options: str) -> tuple[str, str]:
    """(container id, base URL) of a new container published on a free loopback port."""
    container = docker("run", "-d", "-p", "127.0.0.1::3000", *options, image)
    port = docker("port", container, "3000/tcp").splitlines()[0].rsplit(":", 1)[1]
    return container, f"http://127.0.0.1:{port}"


def run(image: str) -> None:
    size_mb = int(docker("image", "inspect", "--format", "{{.Size}}", image)) / 1e6
    print(f"image {image}: {size_mb:.0f} MB")
    container, base = started(image)
    try:
        print(f"ok   healthy after {wait_healthy(container):.0f} s at {base}")
        check_user_and_files(container)
        check_health(base)
        models = served_models(base)
        check_score(base, check_sample(base, models))
        check_metrics(base, models)
        stop(container)
    finally:
        docker("rm", "-f", container, check=False)
    # As compose and Kubernetes run it: nothing but /tmp writable.
    container, base = started(image, "--read-only", "--tmpfs", "/tmp")
    try:
        print(f"ok   read-only root: healthy after {wait_healthy(container):.0f} s")
        check_score(base, check_sample(base, served_models(base)))
        stop(container)
    finally:
        docker("rm", "-f", container, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="elbo-serve:cpu")
    args = parser.parse_args()
    try:
        run(args.image)
    except ImageCheckError as miss:
        print(f"FAIL {miss}", file=sys.stderr)
        return 1
    print("image test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
