"""Offline scoring on Spark against the HTTP service's /score, on this machine and the same
images: images/s of each and their ratio, measured in one run.

    python -m load_tests.bench_spark --model-dir checkpoints/vae --method elbo --images 2000
    python -m load_tests.bench_spark --model-dir checkpoints/ddpm --method vlb_mc --images 200

1. The images: Fashion-MNIST test images 0..N-1 as PNG bytes in one Parquet file (and the same
   PNGs base64-encoded for HTTP, before any clock starts).
2. HTTP: ``bentoml serve`` (load_tests.serving: default lanes, one torch thread per lane, as
   shipped) on the checkpoint; ``--concurrency`` clients send /score requests of
   ``--request-images`` images each until every image has been scored once. Images/s from the
   first request to the last answer; the server's start and warm-up are not counted. The
   server is stopped before Spark starts.
3. Spark: ``--master`` (default local[2]: a task slot per core, one torch thread per Python
   worker) runs :func:`offline.spark_score.run` over the Parquet file twice in one session:
   cold (the first job: Python workers start, import torch, load the model) and warm (a second
   job, to another output: the workers and their model are reused). Images/s over reading,
   scoring and writing; the session's start is reported apart.

The load generator shares the machine's cores with the server (as Spark's driver does with
its workers); the load average before and after is printed, since other jobs may share them.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import requests

from load_tests.serving import running_server, server_environment
from models.data import load_fashion_mnist
from offline.batches import ScoreOptions
from offline.spark_score import Job, run, spark_session
from service.imaging import encode_png


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("checkpoints/vae"))
    parser.add_argument("--method", help="default: the model's first, as /score")
    parser.add_argument("--correction", default="none", choices=("none", "png", "terms"))
    parser.add_argument("--images", type=int, default=2000, help="Fashion-MNIST test images")
    parser.add_argument("--request-images", type=int, default=64, help="images per /score")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP clients")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--batch-size", type=int, default=64, help="Spark: images per batch")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def http_images_per_second(
    args: argparse.Namespace, name: str, images: list[bytes], scratch: Path
) -> tuple[float, int]:
    """(images/s, images flagged) of /score on a fresh `bentoml serve` of the checkpoint."""
    encoded = [base64.b64encode(png).decode() for png in images]
    chunks = [
        encoded[i : i + args.request_images] for i in range(0, len(encoded), args.request_images)
    ]
    body = {"model": name, "correction": args.correction, "seed": args.seed}
    if args.method:
        body["method"] = args.method
    repository = scratch / "models"  # this model alone, under its name
    repository.mkdir()
    (repository / name).symlink_to(args.model_dir.resolve())
    env = server_environment({"ELBO_SERVE_MODEL_DIR": str(repository)}, scratch / "bentoml")
    with (
        running_server(env, scratch / "server.log") as (url, _process),
        requests.Session() as session,
    ):

        def score(chunk: list[str]) -> list[dict]:
            answer = session.post(f"{url}/score", json={**body, "images": chunk}, timeout=900)
            answer.raise_for_status()
            return answer.json()["results"]

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = [r for answered in pool.map(score, chunks) for r in answered]
        seconds = time.perf_counter() - start
    assert len(results) == len(images)
    return len(images) / seconds, sum(r["is_anomaly"] for r in results)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = args.model_dir.resolve().name
    test, _ = load_fashion_mnist("test")
    images = [encode_png(image) for image in test[: args.images]]
    print(
        f"{len(images)} images, {name} {args.method or '(default method)'}, correction "
        f"{args.correction}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        scratch = Path(tmp)
        http, http_flagged = http_images_per_second(args, name, images, scratch)
        print(
            f"HTTP /score: {http:,.1f} images/s ({args.concurrency} clients, "
            f"{args.request_images} images per request; {http_flagged} flagged)"
        )

        source = scratch / "images.parquet"
        pd.DataFrame({"id": range(len(images)), "image": images}).to_parquet(source)
        start = time.perf_counter()
        spark = spark_session(args.master, **{"spark.ui.enabled": "false"})
        spark.sparkContext.setLogLevel("ERROR")
        print(f"Spark session on {args.master}: {time.perf_counter() - start:.1f} s to start")
        options = ScoreOptions(name, args.method, args.correction, seed=args.seed, rows_per_call=16)
        rates = {}
        try:
            for run_name in ("cold", "warm"):
                job = Job(
                    args.model_dir,
                    str(source),
                    str(scratch / run_name),
                    options,
                    batch_size=args.batch_size,
                )
                summary = run(spark, job)
                rates[run_name] = summary.images_per_second
                print(
                    f"Spark {run_name}: {summary.images_per_second:,.1f} images/s "
                    f"({summary.seconds:.1f} s, {summary.partitions} partitions, "
                    f"{summary.model_loads} model loads, {summary.flagged} flagged)"
                )
        finally:
            spark.stop()
    print(
        f"Spark / HTTP: cold {rates['cold'] / http:.2f}x, warm {rates['warm'] / http:.2f}x; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
