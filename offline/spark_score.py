"""Score a dataset of stored images on Spark, as /score would, and write one row per image.

    python -m offline.spark_score --model-dir checkpoints/vae --input images.parquet \\
        --output scores.parquet --method elbo --correction png --seed 0

The input is a Parquet dataset with an id column and a column of PNG bytes (``--id-column``,
``--image-column``; default ``id`` and ``image``), or a folder of ``.png`` files, any depth, each
named by its path under the folder (column ``id``). The driver reads the checkpoint once,
checks the options against its model card (the method, the calibration's k, the threshold for
``--fpr``: the errors /score would answer), broadcasts its files, and runs
:func:`offline.batches.score_batches` in ``mapInPandas`` batches of ``--batch-size`` images:
one model load per Python worker, kept for all its tasks. The output is Parquet: the id, then
:data:`offline.batches.RESULT_COLUMNS` (score, bits/dim, PNG bits/dim, percentile, flag, error,
and the model, method, k, correction, fpr, threshold and seed used).

The code of :mod:`models` and :mod:`offline` is shipped to the executors with the job (a zip
added with ``addPyFile``); executors need the Python packages the models need (torch, numpy,
pillow, safetensors; scipy for ``--correction terms``), and pandas and pyarrow for Spark. No
serving stack: nothing here imports bentoml or :mod:`service`.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from offline.batches import (
    ON_ERROR,
    RESULT_COLUMNS,
    CheckpointFiles,
    ImageScoringError,
    ScoreOptions,
    score_batches,
    scorer_for,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

InputFormat = Literal["auto", "parquet", "images"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("auto", "parquet", "images")
PNG_GLOB = "*.{png,PNG}"
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Job:
    """One scoring run: a checkpoint directory, where the images are and where the scores go."""

    model_dir: Path
    input: str
    output: str
    options: ScoreOptions
    input_format: InputFormat = "auto"
    batch_size: int = 64  # images per mapInPandas batch (Arrow records per batch)
    partitions: int | None = None  # None: at least the cluster's default parallelism
    overwrite: bool = False


@dataclass(frozen=True)
class Summary:
    images: int
    flagged: int
    errors: int
    seconds: float  # reading, scoring and writing (the session was up before)
    model_loads: int  # models loaded by Python workers: one per worker process
    partitions: int
    output: str

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def run(spark: SparkSession, job: Job) -> Summary:
    """Score ``job.input`` into ``job.output``. Raises ImageScoringError (naming the images)
    when images cannot be scored and ``on_error`` is 'fail'; an OptionError naming the option
    (NoCalibrationError for a calibration the card lacks) before any work when the checkpoint
    cannot honour the options."""
    from models.core.checkpoints import load_checkpoint, require_model_card

    options = job.options
    # Fail fast, on the driver: the card's calibration, the k and the threshold for the fpr.
    scorer_for(require_model_card(load_checkpoint(job.model_dir)), options)
    images = _spread(read_images(spark, job), spark, job.partitions)
    ship_code(spark)
    context = spark.sparkContext
    files = context.broadcast(CheckpointFiles.read(job.model_dir))
    loads = context.accumulator(0)

    def score(batches):  # on the executors
        return score_batches(batches, files.value, options, on_load=lambda: loads.add(1))

    scored = images.mapInPandas(score, output_schema(images, options.id_column))
    batch_setting = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_setting, None)
    spark.conf.set(batch_setting, str(job.batch_size))
    start = time.perf_counter()
    try:
        scored.write.mode("overwrite" if job.overwrite else "errorifexists").parquet(job.output)
    except Exception as error:
        found = re.search(r"ImageScoringError: ([^\n]*)", str(error))
        if found is None:
            raise
        # an executor's error as itself, not inside Spark's report of the failed task
        raise ImageScoringError(found.group(1)) from error
    finally:
        files.unpersist()
        if previous is None:
            spark.conf.unset(batch_setting)
        else:
            spark.conf.set(batch_setting, previous)
    seconds = time.perf_counter() - start
    return _summary(spark, job.output, seconds, loads.value, images.rdd.getNumPartitions())


def read_images(spark: SparkSession, job: Job) -> DataFrame:
    """The input as (id column, image column of PNG bytes)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType

    options = job.options
    if _input_format(job) == "images":
        files = (
            spark.read.format("binaryFile")
            .option("pathGlobFilter", PNG_GLOB)
            .option("recursiveFileLookup", "true")
            .load(job.input)
        )
        if files.isEmpty():
            raise FileNotFoundError(f"{job.input}: holds no .png files (at any depth)")
        prefix = _qualified(spark, job.input).rstrip("/") + "/"
        relative = F.when(
            F.col("path").startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})")
        ).otherwise(F.col("path"))
        return files.select(
            relative.alias(options.id_column), F.col("content").alias(options.image_column)
        )
    frame = spark.read.parquet(job.input)
    for column, flag in (
        (options.id_column, "--id-column"),
        (options.image_column, "--image-column"),
    ):
        if column not in frame.columns:
            raise ValueError(
                f"{job.input}: no column {column!r} (columns: {', '.join(frame.columns)}); "
                f"name it with {flag}"
            )
    image_type = frame.schema[options.image_column].dataType
    if not isinstance(image_type, BinaryType):
        raise ValueError(
            f"{job.input}: column {options.image_column!r} is {image_type.simpleString()}; "
            "it must hold the PNG files' bytes (binary)"
        )
    return frame.select(options.id_column, options.image_column)


def output_schema(images: DataFrame, id_column: str) -> str:
    """The output's Spark SQL schema: the id column as the input has it, then the results."""
    taken = {name for name, _ in RESULT_COLUMNS}
    if id_column in taken:
        raise ValueError(f"the id column may not be called {id_column!r}: the output has one")
    id_type = images.schema[id_column].dataType.simpleString()
    return ", ".join([f"`{id_column}` {id_type}", *(f"{n} {t}" for n, t in RESULT_COLUMNS)])


def _input_format(job: Job) -> Literal["parquet", "images"]:
    """'auto': Parquet for a .parquet path, a file, or a folder with .parquet files in it;
    images for any other local folder."""
    if job.input_format != "auto":
        return job.input_format
    path = Path(job.input)
    if job.input.endswith(".parquet") or path.is_file():
        return "parquet"
    if path.is_dir():
        return "parquet" if any(path.glob("*.parquet")) else "images"
    raise ValueError(f"{job.input}: not a local file or folder; say what it is with --input-format")


def _qualified(spark: SparkSession, path: str) -> str:
    """``path`` as Spark names the files under it (``file:/data/x`` for ``data/x``)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    filesystem = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return filesystem.makeQualified(hadoop_path).toString()


def _spread(images: DataFrame, spark: SparkSession, partitions: int | None) -> DataFrame:
    """``partitions`` of them, or at least one per task slot: a small Parquet file is one
    partition, which one core would score alone."""
    if partitions is not None:
        return images.repartition(partitions)
    slots = spark.sparkContext.defaultParallelism
    if images.rdd.getNumPartitions() < slots:
        return images.repartition(slots)
    return images


_shipped: set[str] = set()


def ship_code(spark: SparkSession) -> None:
    """Send this driver's :mod:`models` and :mod:`offline` to the executors (once per
    application), so that they run the code the driver checked the options with."""
    import models
    import offline

    context = spark.sparkContext
    roots = [Path(package.__file__).parent for package in (models, offline)]
    if context.applicationId in _shipped or not all(root.is_dir() for root in roots):
        return  # shipped already, or imported from a zip that spark-submit --py-files sends
    directory = tempfile.mkdtemp(prefix="elbo-serve-code-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)  # served while the driver runs
    archive = Path(directory) / "elbo_serve_code.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                zipped.write(path, path.relative_to(root.parent))
    context.addPyFile(str(archive))
    _shipped.add(context.applicationId)


def _summary(spark: SparkSession, output: str, seconds: float, loads: int, parts: int) -> Summary:
    from pyspark.sql import functions as F

    row = (
        spark.read.parquet(output)
        .agg(
            F.count("*").alias("images"),
            F.coalesce(F.sum(F.col("is_anomaly").cast("int")), F.lit(0)).alias("flagged"),
            F.count("error").alias("errors"),
        )
        .first()
    )
    return Summary(row["images"], row["flagged"], row["errors"], seconds, loads, parts, output)


def spark_session(master: str | None = None, **conf: str) -> SparkSession:
    """The running session (under spark-submit), or a new one on ``master`` (default
    ``local[*]``) with the settings ``conf``. A local session's Python workers run this
    interpreter."""
    from pyspark.sql import SparkSession

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver
    if master is None and not submitted:
        master = "local[*]"
    if master is not None and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("elbo-serve offline scoring")
    if master is not None:
        builder = builder.master(master)
    for key, value in {"spark.ui.showConsoleProgress": "false", **conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


# Command line -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, as /score takes, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def offline_corrections() -> tuple[str, ...]:
    """/score's corrections but 'ratio', whose background model does not travel to executors."""
    from models.eval.plan import CORRECTIONS, RATIO_CORRECTION

    return tuple(c for c in CORRECTIONS if c != RATIO_CORRECTION)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m offline.spark_score",
        description="Score stored images with a checkpoint's calibrated anomaly score on Spark: "
        "the numbers /score would answer for each image sent alone with the same options.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="a checkpoint directory")
    parser.add_argument(
        "--model-name", help="the name written in the output (default: the directory's name)"
    )
    parser.add_argument("--input", required=True, help="a Parquet dataset or a folder of PNGs")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="auto")
    parser.add_argument("--id-column", default="id", help="Parquet input: the images' ids")
    parser.add_argument("--image-column", default="image", help="Parquet input: PNG bytes")
    parser.add_argument("--output", required=True, help="where the Parquet output goes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--method", help="the bound (default: the model's first, as /score)")
    parser.add_argument(
        "--correction",
        choices=offline_corrections(),
        default=None,
        help="as /score's; default: the one the model card recommends, as /score's (ratio is "
        "not offered offline: its background model does not travel to the executors)",
    )
    parser.add_argument(
        "--regret-steps",
        type=_positive,
        help="--correction regret: optimisation steps (default and only choice: the card's)",
    )
    parser.add_argument("--fpr", type=_rate, default=0.05, help="false-positive rate (0.05)")
    parser.add_argument("--k", type=_positive, help="default and only choice: the calibration's")
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="each image's draws are seeded with a hash of this and its id (0)",
    )
    parser.add_argument(
        "--same-seed",
        action="store_true",
        help="seed every image's draws with --seed itself (all images then share them)",
    )
    parser.add_argument("--on-error", choices=ON_ERROR, default="fail")
    parser.add_argument("--batch-size", type=_positive, default=64, help="images per batch")
    parser.add_argument("--rows-per-call", type=_positive, default=16, help="per network call")
    parser.add_argument("--torch-threads", type=_positive, default=1, help="per Python worker")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto, per executor")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="CPU networks in the default memory format (the service runs channels_last)",
    )
    parser.add_argument("--partitions", type=_positive, help="repartition the input into N")
    parser.add_argument("--master", help="Spark master (default: spark-submit's, or local[*])")
    return parser.parse_args(argv)


def job_from_args(args: argparse.Namespace) -> Job:
    """The job the command line asks for (its options are named as ScoreOptions' fields)."""
    named = {field.name for field in fields(ScoreOptions)} - {"model_name"}
    options = ScoreOptions(
        model_name=args.model_name or args.model_dir.resolve().name,
        **{name: getattr(args, name) for name in named},
    )
    return Job(
        args.model_dir,
        args.input,
        args.output,
        options,
        args.input_format,
        args.batch_size,
        args.partitions,
        args.overwrite,
    )


def main(argv: list[str] | None = None) -> Summary:
    from pyspark.errors import AnalysisException
    from pyspark.sql import SparkSession

    from models.kinds import OptionError

    args = parse_args(argv)
    job = job_from_args(args)
    running = SparkSession.getActiveSession()
    spark = running or spark_session(args.master)
    try:
        summary = run(spark, job)
    except OptionError as error:  # a missing calibration too
        raise SystemExit(f"error: --{error.field.replace('_', '-')}: {error.message}") from error
    except (ImageScoringError, FileNotFoundError, ValueError, AnalysisException) as error:
        raise SystemExit(f"error: {error}") from error
    finally:
        if running is None:
            spark.stop()
    print(
        f"{summary.images:,} images scored into {summary.output} in {summary.seconds:.1f} s "
        f"({summary.images_per_second:,.1f} images/s, {summary.partitions} partitions, "
        f"{summary.model_loads} model loads): {summary.flagged:,} flagged at fpr "
        f"{job.options.fpr:g}, {summary.errors:,} could not be scored"
        + (" (see the error column)" if summary.errors else "")
    )
    return summary


if __name__ == "__main__":
    main()
