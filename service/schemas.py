"""Every request and response body of the service, with bounds and descriptions.

Requests are flat JSON objects. ``model`` is any served model's name (GET /models lists them
with their image shape, methods, samplers and option limits). Bounds that depend on the model
(its methods and their k, its samplers, a diffusion model's T for ``steps``, its image shape)
are checked by the served model once the name is resolved, with messages that start with the
field's name, so a 400 always says which field was wrong and what is expected.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode

from models.core.repository import MODEL_NAME_PATTERN
from service.openapi import OpenAPI30JsonSchema

ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_NAME_PATTERN,
        description="A served model's name (GET /models lists them; the bundled ones are "
        "'vae' and 'ddpm').",
    ),
]
MethodName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
OutputFormat = Literal["grid", "png", "array"]
# models.eval.plan.CORRECTIONS, spelled out for the OpenAPI document (a test keeps them equal)
Correction = Literal["none", "png", "webp", "ratio", "terms", "regret"]
# Request fields that are options of a model kind's operation (models.kinds): each kind takes
# some of them, and a request setting one its model does not take is a 400.
SAMPLE_OPTIONS = ("steps", "eta", "temperature", "sample_pixels")
ENCODE_OPTIONS = ("steps", "sample")
DECODE_OPTIONS = ("steps",)
MAX_SEED = 2**63 - 1
MAX_IMAGES = 256
# The most Adam steps a Likelihood Regret may take (models.vae.regret.REGRET_STEPS_RANGE; a
# test keeps them equal): 500 steps are about 1,000 decoder evaluations per image.
MAX_REGRET_STEPS = 500
# Largest |value| accepted in a latent. Real latents are a few units: posterior means of the
# bundled VAE reach |z| = 7.1 and DDIM-50 inversions of the DDPM |x_T| = 10.7, over 16 test
# images plus blank, white, noise and stripe images. Both decoders stay finite to 1e6 and give
# NaN at 1e30 (float32 overflow), so 1000 leaves room for interpolation and extrapolation and
# a wide margin below overflow.
MAX_LATENT_ABS = 1000.0

_IMAGES_DESCRIPTION = (
    "Images, each a base64-encoded 8-bit PNG in the model's mode and size (GET /models: 'L' "
    "grayscale or 'RGB', H x W; the bundled checkpoints take 28x28 L; a "
    "'data:image/png;base64,' prefix is allowed) or a nested array of integers 0..255 of "
    "shape (C, H, W), or (H, W) for grayscale. A multipart/form-data request may instead "
    "upload PNG files, one 'images' part per image, with the other fields as form fields."
)


class _Schema(BaseModel):
    """Publishes its JSON Schema in the OpenAPI 3.0 dialect of /docs.json (service/openapi.py)."""

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool | None = None,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = OpenAPI30JsonSchema,
        mode: JsonSchemaMode = "validation",
        **kwargs: Any,
    ) -> dict[str, Any]:
        return super().model_json_schema(by_alias, ref_template, schema_generator, mode, **kwargs)


class _Request(_Schema):
    # Unknown fields are errors: a misspelt option must not silently fall back to a default.
    # Strict types: a value of another JSON type than the one published (0 for a boolean,
    # "2" for a number) is a 400, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class SampleRequest(_Request):
    operation: ClassVar[str] = "sample"  # per-model rules: service/openapi.py
    model: ModelName
    n: int = Field(1, ge=1, le=64, description="How many images to draw.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Random seed: the same seed gives the same images, whatever other "
        "requests share the batch. Omitted: a random seed, returned in the response.",
    )
    sampler: str | None = Field(
        None,
        max_length=32,
        description="One of the model's samplers (GET /models); default: the checkpoint's "
        "measured serving default (GET /models: default_sample), else its first. DDPMs: "
        "'ddim' (Song et al. 2020, `steps` steps) or 'ancestral' (Ho et al. 2020: all T "
        "steps, slow on CPU, prefer /sample_task; or `steps` of them respaced with the "
        "model's learned variances, Nichol & Dhariwal 2021). VAEs: 'prior'.",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="Diffusion models: denoising steps, 1..T of the model (GET /models "
        "gives each model's range). Default: the checkpoint's serving default, else 50 for "
        "DDIM and all T for ancestral sampling.",
    )
    eta: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Diffusion models, DDIM: 0 is the deterministic ODE, 1 DDPM-like noise at "
        "each step (default, unless the checkpoint's serving default says otherwise); the seed "
        "decides the images either way.",
    )
    temperature: float | None = Field(
        None,
        gt=0.0,
        le=2.0,
        description="VAEs: prior scale, z ~ N(0, temperature^2 I) (default 1).",
    )
    sample_pixels: bool | None = Field(
        None,
        description="VAEs: draw pixels from p(x|z) instead of returning the decoder mean "
        "(default false).",
    )
    output: OutputFormat = Field(
        "png",
        description="'png': a list of base64 PNGs; 'grid': one base64 PNG tiling all images; "
        "'array': nested (C, H, W) lists of integers 0..255.",
    )


class ImagesPayload(_Schema):
    """Images in the format the request asked for; the other fields are empty.

    (Empty lists rather than nulls: BentoML's Python client cannot decode a null array.)
    """

    images: list[str] = Field(default_factory=list, description="Base64-encoded PNGs ('png').")
    grid: str | None = Field(None, description="One base64-encoded PNG tiling all images ('grid').")
    arrays: list[list[list[list[int]]]] = Field(
        default_factory=list,
        description="Images as (C, H, W) nested lists of integers 0..255 ('array').",
    )


class SampleResponse(ImagesPayload):
    model: str
    n: int
    seed: int = Field(description="The seed that drew these images (pass it to redraw them).")
    sampler: str = Field(description="The sampler that drew them.")
    steps: int | None = Field(
        None, description="Denoising steps run; null for models that take no steps."
    )


class LikelihoodRequest(_Request):
    operation: ClassVar[str] = "likelihood"  # per-model rules: service/openapi.py
    model: ModelName
    images: list[str | list[Any]] = Field(
        min_length=1, max_length=MAX_IMAGES, description=_IMAGES_DESCRIPTION
    )
    method: MethodName | None = Field(
        None,
        description="One of the model's bounds (GET /models); default: its first. VAEs: "
        "'elbo' (default) or 'iwae' (with k). DDPMs: 'vlb_mc' (default, k stratified "
        "timesteps, with a standard error) or 'vlb_exact' (all T terms, T network calls per "
        "image; use /likelihood_task for many images).",
    )
    k: int | None = Field(
        None,
        ge=1,
        description="Samples of the methods that take k, in the range GET /models gives: "
        "iwae importance samples (1..5000, default 100); vlb_mc timesteps (2..2(T-1), default "
        "20). Not used by the other methods.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the bound's Monte-Carlo draws (reproducible)."
    )


class ImageBound(_Schema):
    """A codelength bound on -log p(x) for one image (lower is better), summed over its
    D = C*H*W dimensions in nats, and per dimension in bits."""

    total_nats: float
    total_bits_per_dim: float
    reconstruction_nats: float | None = Field(
        None, description="VAE: -E_q[log p(x|z)]; DDPM: L_0 = -log p(x_0|x_1). Null for iwae."
    )
    kl_nats: float | None = Field(None, description="VAE elbo: KL(q(z|x) || N(0, I)).")
    prior_nats: float | None = Field(None, description="DDPM: L_T, prior matching.")
    denoising_nats: float | None = Field(
        None, description="DDPM: sum of the denoising terms L_1..L_{T-1}."
    )
    stderr_nats: float | None = Field(
        None, description="Standard error of total_nats where estimated (vlb_mc); else null."
    )


class LikelihoodResponse(_Schema):
    model: str
    method: str
    k: int | None
    seed: int
    results: list[ImageBound]


class ScoreRequest(LikelihoodRequest):
    operation: ClassVar[str] = "score"  # per-model rules: service/openapi.py
    k: int | None = Field(
        None,
        ge=1,
        description="Defaults to the k the model card's calibration used; another k would "
        "make scores incomparable with the calibrated thresholds.",
    )
    fpr: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Target false-positive rate on normal data; picks the calibrated threshold.",
    )
    correction: Correction | None = Field(
        None,
        description="Omitted or null: the correction the model card recommends for the method (GET "
        "/models: `recommended_correction`, the one that detected its outlier sets best), "
        "'none' where it recommends none. 'none': the score is the bound in bits/dim. 'png': "
        "the bound minus the image's PNG codelength in bits/dim (Serra et al. 2019), which "
        "discounts how simple an image is. 'webp': the same with the image's lossless WebP "
        "codelength, a better codec (higher AUROC on the bundled VAE's outlier sets). "
        "'terms': the negative log density (nats) of the bound's per-image terms (VAE: "
        "reconstruction and KL; DDPM: L_T, bands of timesteps, L_0) under a density fitted on"
        " held-out normal images (DoSE, Morningstar et al. 2021). 'ratio': the bound minus "
        "the bound of the model's background model in bits/dim, a likelihood ratio (Ren et "
        "al. 2019; the background was trained on perturbed normal images, and the model card "
        "names it; 409 for a model without one). 'regret': the Likelihood Regret (Xiao et al."
        " 2020), the bound minus the bound with the image's own posterior optimised by "
        "`regret_steps` Adam steps from the encoder's, in bits/dim (>= 0; VAEs only: 400 for "
        "a model that offers none, GET /models: likelihood_regret; 409 for a card without its"
        " calibration).",
    )
    regret_steps: int | None = Field(
        None,
        ge=0,
        le=MAX_REGRET_STEPS,
        description="Correction 'regret': Adam steps on each image's posterior. Defaults to "
        "the steps the model card's regret calibration used, the only value it takes (more "
        "steps give a larger regret, incomparable with the thresholds); GET /models gives "
        "them. Each step costs a decoder call forward and backward per image: past the "
        "request-cost ceiling, 413, use /score_task.",
    )
    maps: bool = Field(
        False,
        description="Also return, per image, an anomaly map: where the bound's codelength goes, "
        "pixel by pixel (the bound per dimension, summing to the image's bound), normalised "
        "against held-out normal images as z = (nats - mean) / (std + eps) per pixel (the "
        "model card's pixel_calibration; 409 without one), and a heat map of it over the "
        "image. Methods with a per-pixel form only (not iwae).",
    )
    map_normalisation: Literal["pixel", "global"] = Field(
        "pixel",
        description="How maps are normalised: 'pixel', each pixel by its own normal mean and "
        "spread (for aligned images: one product, one pose); 'global', by the mean and spread "
        "of all pixels of normal images together, which ranks pixels as the raw codelength "
        "does (better for unaligned images: on Fashion-MNIST defects, pixel AUROC 0.871 "
        "against 0.817 per pixel for the bundled VAE).",
    )


class ImageScore(_Schema):
    score: float = Field(
        description="Anomaly score (higher is more anomalous): bits/dim, or nats of -log "
        "density for correction 'terms'."
    )
    bits_per_dim: float = Field(description="The model's bound in bits/dim.")
    png_bits_per_dim: float = Field(description="The image's optimised PNG size in bits/dim.")
    background_bits_per_dim: float | None = Field(
        None,
        description="Correction 'ratio': the background model's bound in bits/dim (the score "
        "is bits_per_dim minus this); else null.",
    )
    optimised_bits_per_dim: float | None = Field(
        None,
        description="Correction 'regret': the bound with the image's optimised posterior in "
        "bits/dim, never above bits_per_dim (the score is bits_per_dim minus this); else null.",
    )
    is_anomaly: bool = Field(description="score > threshold.")
    percentile: float = Field(
        description="Percentage (0..100) of held-out normal images scoring lower."
    )
    # An empty list rather than null: BentoML's Python client cannot decode a null array.
    anomaly_map: list[list[list[float]]] = Field(
        default_factory=list,
        description="With maps: the normalised map z, nested (C, H, W): how many normal-image "
        "standard deviations each pixel's codelength is above its normal mean; else empty.",
    )
    heatmap_png: str | None = Field(
        None,
        description="With maps: base64 RGB PNG of the image under a heat map of z (the largest "
        "over channels): fixed scale, z clipped to [0, 6], blue (0) to red (6 or more).",
    )


class ScoreResponse(_Schema):
    model: str
    method: str
    k: int | None
    correction: Correction
    fpr: float
    threshold: float = Field(description="Calibrated score threshold for `fpr`.")
    calibration_source: str
    calibration_images: int
    background: str | None = Field(
        None, description="Correction 'ratio': the background model's name; else null."
    )
    regret_steps: int | None = Field(
        None, description="Correction 'regret': Adam steps per image; else null."
    )
    regret_learning_rate: float | None = Field(
        None, description="Correction 'regret': Adam's learning rate; else null."
    )
    results: list[ImageScore]


class EncodeRequest(_Request):
    operation: ClassVar[str] = "encode"  # per-model rules: service/openapi.py
    model: ModelName
    images: list[str | list[Any]] = Field(
        min_length=1, max_length=MAX_IMAGES, description=_IMAGES_DESCRIPTION
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="Diffusion models: DDIM inversion steps, 1..T (default 50; more is more "
        "exact).",
    )
    sample: bool | None = Field(
        None, description="VAEs: also return one draw z ~ q(z|x) (default false)."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of any random draw (VAE: z).")


class EncodeResponse(_Schema):
    model: str
    means: list[list[float]] = Field(
        default_factory=list, description="VAE: posterior means (B, Z)."
    )
    logvars: list[list[float]] = Field(
        default_factory=list, description="VAE: posterior log-variances (B, Z)."
    )
    samples: list[list[float]] = Field(default_factory=list, description="VAE: z ~ q(z|x) (B, Z).")
    latents: list[list[list[list[float]]]] = Field(
        default_factory=list, description="DDPM: DDIM-inverted x_T, (B, C, H, W)."
    )
    steps: int | None = Field(None, description="DDPM: inversion steps.")
    reconstruction_rmse: list[float] = Field(
        default_factory=list,
        description="DDPM: RMS error, on the [-1, 1] scale, of decoding x_T back.",
    )
    reconstruction_max_pixel_error: list[int] = Field(
        default_factory=list,
        description="DDPM: largest error of that reconstruction in 8-bit levels.",
    )


class DecodeRequest(_Request):
    operation: ClassVar[str] = "decode"  # per-model rules: service/openapi.py
    model: ModelName
    latents: list[list[Any]] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="Latents of the model's latent_shape (GET /models). VAE: latent vectors "
        "(Z floats each); DDPM: x_T arrays of shape (C, H, W), e.g. from /encode. Every value "
        "must be "
        f"a finite number with |value| <= {MAX_LATENT_ABS:g} (real latents are a few units): "
        "anything else is a 400 naming its position, e.g. 'latents[0][3]'.",
    )
    steps: int | None = Field(
        None, ge=1, description="Diffusion models: DDIM decoding steps, 1..T (default 50)."
    )
    output: OutputFormat = Field("png", description="As for /sample.")


class DecodeResponse(ImagesPayload):
    model: str


class ImageInfo(_Schema):
    channels: int
    height: int
    width: int
    mode: str = Field(description="The PNG mode of its images: 'L' (grayscale) or 'RGB'.")


class ScoreCalibrationInfo(_Schema):
    k: int | None = Field(description="The k the calibration used: the only k /score takes.")
    min_fpr: float = Field(
        description="The smallest false-positive rate its calibration images resolve: the "
        "least `fpr` /score takes."
    )
    regret_steps: int | None = Field(
        None, description="Correction 'regret': the steps it used, the only ones /score takes."
    )


class MethodInfo(_Schema):
    description: str
    k_range: list[int] | None = Field(description="Inclusive k range; null: takes no k.")
    default_k: int | None
    maps: bool = Field(
        False, description="Whether /score can map it pixel by pixel (it has a per-pixel form)."
    )
    scores: dict[str, ScoreCalibrationInfo] = Field(
        default_factory=dict,
        description="Per /score correction the model card calibrates it for, what /score "
        "takes with it (a correction not listed is a 409).",
    )
    recommended_correction: str = Field(
        "none",
        description="What /score uses when a request names no correction: the one the "
        "model card measured best on its outlier sets (highest mean AUROC), else 'none'.",
    )


class RegretInfo(_Schema):
    bound: str = Field(description="The method whose bound the regret refines.")
    description: str
    steps_range: list[int] = Field(description="Inclusive range of Adam steps it can take.")
    default_steps: int
    learning_rate: float = Field(description="Adam's default learning rate.")


class OptionInfo(_Schema):
    default: Any
    description: str
    range: list[int] | None = Field(None, description="Inclusive range, where the model sets one.")


class MachineInfo(_Schema):
    cpu: str = Field(description="The CPU's model name (/proc/cpuinfo).")
    flags: list[str] = Field(description="Its instruction-set flags that decide oneDNN's kernels.")
    torch: str
    capability: str = Field(description="torch's CPU kernel level (DEFAULT, AVX2, AVX512).")
    threads: int = Field(description="torch threads the timings ran with.")
    native_bf16: bool = Field(description="Whether the CPU has bf16 arithmetic in hardware.")


class CpuModeInfo(_Schema):
    mode: str = Field(description="The CPU speed mode its networks run in (docs/cpu_modes.md).")
    source: Literal["measured", "cached", "forced"] = Field(
        description="measured at this start, cached from an earlier one on this CPU, torch and "
        "weights, or forced by ELBO_SERVE_CHANNELS_LAST / ELBO_SERVE_COMPILE."
    )
    seconds: dict[str, dict[str, float]] = Field(
        description="Per candidate mode, median seconds of each hot call (empty when forced)."
    )
    speedup_over_fp32_eager: dict[str, float] = Field(
        description="Per candidate, float32 eager's seconds over its own (geometric mean over "
        "the hot calls; above 1: faster)."
    )
    bound_diff_bits_per_dim: dict[str, float] = Field(
        description="Per candidate, the largest change of the bound on the probe batch."
    )
    tolerance_bits_per_dim: float = Field(description="The most a chosen mode may move it.")
    measure_seconds: float = Field(description="Seconds the measurement took (0: not run).")
    machine: MachineInfo


class ModelInfo(_Schema):
    kind: str
    checkpoint: str
    device: str
    image: ImageInfo
    latent_shape: list[int] = Field(description="Shape of one latent from /encode for /decode.")
    methods: dict[str, MethodInfo] = Field(description="Its bounds; the first is the default.")
    samplers: list[str] = Field(
        description="Its samplers; the first is the default unless serving_defaults names one."
    )
    default_sample: dict[str, Any] = Field(
        description="The sampler and options /sample runs with when a request sets none."
    )
    sampler_defaults: dict[str, dict[str, Any]] = Field(
        description="Per sampler, the options /sample runs it with when a request names it "
        "and sets no options (a DDPM's DDIM takes 50 steps, its ancestral sampling all T; "
        "the serving default's sampler takes the measured options)."
    )
    serving_defaults: dict[str, Any] | None = Field(
        default=None,
        description="The checkpoint's serving_defaults.json: the sampler and options measured "
        "best for these weights, the weights' SHA-256 and the figures that chose them (null: "
        "the kind's defaults).",
    )
    options: dict[str, dict[str, OptionInfo]] = Field(
        description="Per operation (sample, encode, decode), the options it takes."
    )
    likelihood_regret: RegretInfo | None = Field(
        default=None,
        description="The Likelihood Regret it offers (/score correction 'regret'; calibrated "
        "where its bound's `scores` list 'regret'); null: it offers none (a DDPM).",
    )
    config: dict[str, Any]
    source: dict[str, Any] = Field(
        description='Where the checkpoint came from: {"format": "elbo-serve"}, or a diffusers '
        "folder's format, UNet and scheduler settings (docs/diffusers.md)."
    )
    card: dict[str, Any] = Field(description="The checkpoint's model card (measured numbers).")
    cpu_mode: CpuModeInfo | None = Field(
        default=None, description="Its networks' CPU speed mode and why (none on a GPU)."
    )


class ModelsResponse(_Schema):
    models: dict[str, ModelInfo]


class ProgressRequest(_Request):
    task_id: str = Field(min_length=1, max_length=128, description="From a task's /submit.")


class ProgressResponse(_Schema):
    task_id: str
    done: int = Field(description="Units of work done (denoising steps or bound rows).")
    total: int
    fraction: float = Field(ge=0.0, le=1.0)
