"""What runs on each executor: pandas batches of (id, PNG bytes) in, per image its calibrated
anomaly score out, judged by :class:`models.eval.calibrated.CalibratedScorer` (what /score
judges with). No Spark here: :mod:`offline.spark_score` feeds these functions through
``mapInPandas``; they take and yield plain pandas DataFrames.

One model per worker process: the checkpoint arrives as its files' bytes (broadcast by the
driver), is written to a temporary directory, loaded and checked once (the model card's weights
hash included), and kept for every later batch and task of that process, which PySpark reuses.

Randomness: each image gets its own generator, seeded as a /score request holding that image
alone seeds it, with the image's seed: by default a hash of the job's ``seed`` and the image's
id (:func:`image_seed`), so that images draw independently of one another, as the held-out
images that calibrated the thresholds did; with ``same_seed``, the job's seed itself. The seed
is written beside the score: the ``/score`` answer to ``{"images": [image], "seed": seed}``
with the same options is the row's numbers (to float rounding: the network sees batches of
another size). A score never depends on the batch, partition or order the image was read in.

Images that cannot be scored: PNG bytes are read as /score reads them (:mod:`models.core.png`:
8-bit, the model's mode and size; nothing is converted), and a bound that comes out NaN or
infinite is refused as /score refuses it. With ``on_error='fail'`` (the default) the batch
raises :class:`ImageScoringError` naming every such image of the batch by id, which stops the
job; with ``'record'`` the problem goes to the row's ``error`` column, its numbers are null, and
the other images are scored.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from models.core.checkpoints import Checkpoint
    from models.eval.calibrated import CalibratedScorer, ImageScores

OnError = Literal["fail", "record"]
ON_ERROR: tuple[OnError, ...] = ("fail", "record")
# The columns written for every image after its id, with their Spark SQL types.
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("score", "double"),
    ("bits_per_dim", "double"),
    ("png_bits_per_dim", "double"),
    ("percentile", "double"),
    ("is_anomaly", "boolean"),
    ("error", "string"),
    ("model", "string"),
    ("method", "string"),
    ("k", "int"),
    ("correction", "string"),
    ("fpr", "double"),
    ("threshold", "double"),
    ("seed", "bigint"),
)
_NUMBERS = ("score", "bits_per_dim", "png_bits_per_dim", "percentile")  # null for unscored rows
NON_FINITE = (
    "the model's bound for this image is NaN or infinite: a fault of the model or its "
    "numerics, not of the image"
)
_MAX_NAMED = 10  # images named in one error; the count says how many more


class ImageScoringError(ValueError):
    """Images of a batch that cannot be scored, each named by its id; one line."""


@dataclass(frozen=True)
class ScoreOptions:
    """How every image is scored, as a /score request would ask (picklable: it travels to
    the executors). ``method`` None is the model's first; ``k`` None the calibration's."""

    model_name: str
    method: str | None = None
    correction: str | None = None  # None: the card's recommended correction, as /score's
    fpr: float = 0.05
    k: int | None = None
    regret_steps: int | None = None  # correction 'regret': None is the calibration's
    seed: int = 0
    same_seed: bool = False  # every image drawn with ``seed`` itself, not its image_seed
    rows_per_call: int = 16  # rows per network call (ELBO_SERVE_BOUND_CALL_ROWS' default)
    torch_threads: int = 1  # per Python worker: one task slot, one core
    device: str = "cpu"
    # channels_last networks on a CPU, as the service runs them (ELBO_SERVE_CHANNELS_LAST)
    channels_last: bool = True
    on_error: OnError = "fail"
    id_column: str = "id"
    image_column: str = "image"

    @property
    def scorer_key(self) -> tuple[Any, ...]:
        """What the loaded scorer depends on (the rest only changes how images are fed)."""
        names = ("model_name", "method", "correction", "fpr", "k", "regret_steps", "device")
        names += ("channels_last",)
        return tuple(getattr(self, name) for name in names)


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint directory's files as bytes, to send to executors that cannot see it;
    ``key`` (a SHA-256 of all of them) tells a worker whether it holds this model already."""

    files: Mapping[str, bytes] = field(repr=False)
    key: str

    @classmethod
    def read(cls, directory: str | Path) -> CheckpointFiles:
        from models.core.checkpoints import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE

        directory = Path(directory)
        names = [n for n in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) if (directory / n).is_file()]
        files = {name: (directory / name).read_bytes() for name in names}
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        return cls(files, digest.hexdigest())

    def load(self, device: str = "cpu") -> Checkpoint:
        """The checkpoint, checked as the service checks it (a card is required)."""
        from models.core.checkpoints import load_checkpoint, require_model_card
        from models.core.device import resolve_device

        directory = Path(tempfile.mkdtemp(prefix="elbo-serve-checkpoint-"))
        try:
            for name, data in self.files.items():
                (directory / name).write_bytes(data)
            return require_model_card(load_checkpoint(directory, resolve_device(device)))
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def image_seed(seed: int, image_id: Any) -> int:
    """The seed of one image's draws: a hash of the job's ``seed`` and the image's id, in
    0..2^63 - 1 as /score takes seeds. Ids should be unique; images with one id share draws."""
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def scorer_for(checkpoint: Checkpoint, options: ScoreOptions) -> CalibratedScorer:
    """The checkpoint's calibrated scorer for ``options`` (an OptionError naming the option
    when the model or its card cannot honour them)."""
    from models.eval.calibrated import CalibratedScorer
    from models.kinds import kind_of

    return CalibratedScorer.of(
        options.model_name,
        kind_of(checkpoint.kind),
        checkpoint.model,
        checkpoint.card,
        options.method,
        options.correction,
        options.fpr,
        options.k,
        regret_steps=options.regret_steps,
    )


# This worker process's model: (checkpoint key, scorer key) -> scorer; one at a time.
_loaded: dict[tuple[Any, ...], CalibratedScorer] = {}


def worker_scorer(files: CheckpointFiles, options: ScoreOptions, on_load=None) -> CalibratedScorer:
    """The scorer of this worker process, loaded on first use (then ``on_load()``)."""
    key = (files.key, *options.scorer_key)
    if key not in _loaded:
        import torch

        from models.nn.acceleration import Acceleration, accelerate

        _loaded.clear()  # a new job's model replaces the last one
        torch.set_num_threads(options.torch_threads)
        checkpoint = files.load(options.device)
        if options.channels_last and next(checkpoint.model.parameters()).device.type == "cpu":
            accelerate(checkpoint.model, Acceleration(channels_last=True))
        _loaded[key] = scorer_for(checkpoint, options)
        if on_load is not None:
            on_load()
    return _loaded[key]


def score_batches(
    batches: Iterator[pd.DataFrame], files: CheckpointFiles, options: ScoreOptions, on_load=None
) -> Iterator[pd.DataFrame]:
    """``mapInPandas``' function: each batch of (id, image) rows -> its scored rows."""
    scorer = None
    for frame in batches:
        if scorer is None:  # an empty partition loads nothing
            scorer = worker_scorer(files, options, on_load)
        yield score_frame(scorer, frame, options)


def score_frame(scorer: CalibratedScorer, frame: pd.DataFrame, options: ScoreOptions):
    """One batch: the id column, then :data:`RESULT_COLUMNS`, one row per input row."""
    from models.core.png import ImageFormatError, png_to_array

    ids = frame[options.id_column].tolist()
    problems: dict[int, str] = {}
    arrays: dict[int, np.ndarray] = {}
    for i, data in enumerate(frame[options.image_column].tolist()):
        try:
            arrays[i] = png_to_array(_png_bytes(data), scorer.image_shape)
        except ImageFormatError as error:
            problems[i] = str(error)
    _stop_on(problems, ids, options)
    if options.same_seed:
        seeds = [options.seed] * len(ids)
    else:
        seeds = [image_seed(options.seed, image_id) for image_id in ids]
    rows, judged = _score(scorer, arrays, seeds, problems, ids, options)
    return _frame(ids, seeds, rows, judged, problems, scorer, options)


def _png_bytes(data: Any) -> bytes:
    from models.core.png import ImageFormatError

    if data is None:
        raise ImageFormatError("no image: the image column is null")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageFormatError(f"expected PNG bytes, got {type(data).__name__}")
    return bytes(data)


def _score(
    scorer: CalibratedScorer,
    arrays: Mapping[int, np.ndarray],
    seeds: Sequence[int],
    problems: dict[int, str],
    ids: Sequence[Any],
    options: ScoreOptions,
) -> tuple[list[int], ImageScores | None]:
    """The rows scored and their scores; a row whose bound is not finite joins ``problems``
    and the others are scored again (each row's draws are its own, so they do not change)."""
    import torch

    from models.core.noise import seeded_generator
    from models.core.pixels import NonFiniteError

    rows = sorted(arrays)
    while rows:
        pixels = torch.from_numpy(np.stack([arrays[i] for i in rows]))
        generators = [seeded_generator(seeds[i]) for i in rows]
        try:
            return rows, scorer.score(pixels, generators, options.rows_per_call)
        except NonFiniteError as error:
            failed = {rows[r] for r in error.rows}
            problems.update(dict.fromkeys(failed, NON_FINITE))
            _stop_on(problems, ids, options)
            rows = [i for i in rows if i not in failed]
    return rows, None


def _stop_on(problems: Mapping[int, str], ids: Sequence[Any], options: ScoreOptions) -> None:
    """With on_error 'fail', an ImageScoringError naming the images of ``problems``."""
    if not problems or options.on_error != "fail":
        return
    named = [f"image {ids[i]!r}: {problems[i]}" for i in sorted(problems)[:_MAX_NAMED]]
    more = f"; and {len(problems) - _MAX_NAMED} more" if len(problems) > _MAX_NAMED else ""
    raise ImageScoringError(
        f"{len(problems)} of {len(ids)} images in a batch cannot be scored: "
        f"{'; '.join(named)}{more} (--on-error record writes each problem to the error "
        "column and scores the other images)"
    )


def _frame(
    ids: list[Any],
    seeds: list[int],
    rows: Sequence[int],
    judged: ImageScores | None,
    problems: Mapping[int, str],
    scorer: CalibratedScorer,
    options: ScoreOptions,
) -> pd.DataFrame:
    import pandas as pd

    n = len(ids)
    numbers = {name: np.full(n, np.nan) for name in _NUMBERS}
    flags: list[bool | None] = [None] * n
    if judged is not None:
        index = np.asarray(rows, dtype=np.int64)
        for name in _NUMBERS:
            numbers[name][index] = getattr(judged, name)
        for row, flag in zip(rows, judged.is_anomaly.tolist(), strict=True):
            flags[row] = flag
    constant = {
        "model": scorer.name,
        "method": scorer.method.name,
        "k": scorer.k,
        "correction": scorer.correction,
        "fpr": scorer.fpr,
        "threshold": scorer.threshold,
    }
    columns: dict[str, Any] = {options.id_column: ids, **numbers, "is_anomaly": flags}
    columns["error"] = [problems.get(i) for i in range(n)]
    columns.update({name: [value] * n for name, value in constant.items()})
    columns["seed"] = seeds
    return pd.DataFrame(columns)[[options.id_column, *(name for name, _ in RESULT_COLUMNS)]]
