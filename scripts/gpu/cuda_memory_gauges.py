"""Whether the CUDA memory gauges move: a real `bentoml serve` on the GPU, its gauges read
idle and after each of a few requests of growing size (the peak gauge should follow each
call's working set; the allocated gauge stays near the weights)."""

import json
import os
import tempfile
import urllib.request
from pathlib import Path

from load_tests.bench_parts import cuda_memory_gauges
from load_tests.serving import running_server, server_environment

REQUESTS = [
    ("/sample", {"model": "ddpm", "n": 1, "seed": 0, "steps": 5}),
    ("/sample", {"model": "ddpm", "n": 64, "seed": 0, "steps": 5}),
    ("/sample", {"model": "vae", "n": 64, "seed": 0}),
]


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status


with tempfile.TemporaryDirectory() as scratch:
    device = os.environ.get("ELBO_SERVE_DEVICE", "cuda")  # cpu: a dry run, the gauges absent
    env = server_environment({"ELBO_SERVE_DEVICE": device}, Path(scratch))
    with running_server(env, Path(scratch) / "server.log") as (url, _process):
        print("idle", cuda_memory_gauges(url))
        for path, body in REQUESTS:
            status = post(url + path, body)
            print(path, body, status, cuda_memory_gauges(url))
