"""Every request and response body of the service, with bounds and descriptions.

Requests are flat JSON objects. Field bounds that depend on another field (a method only one
model has, a k range per method) are checked by model validators whose messages start with the
field's name, so a 400 always says which field was wrong and what is expected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode

from service.openapi import OpenAPI30JsonSchema

ModelName = Literal["vae", "ddpm"]
Method = Literal["elbo", "iwae", "vlb_exact", "vlb_mc"]
OutputFormat = Literal["grid", "png", "array"]
Correction = Literal["none", "png"]

METHODS: dict[str, tuple[str, ...]] = {"vae": ("elbo", "iwae"), "ddpm": ("vlb_exact", "vlb_mc")}
DEFAULT_METHOD = {"vae": "elbo", "ddpm": "vlb_mc"}
# Sample-count bounds per method: IWAE importance samples; stratified VLB timesteps
# (two draws per stratum over the T - 1 = 999 denoising terms).
K_RANGE = {"iwae": (1, 5000), "vlb_mc": (2, 1998)}
DEFAULT_K = {"iwae": 100, "vlb_mc": 20}
MAX_SEED = 2**63 - 1
MAX_IMAGES = 256
# Largest |value| accepted in a latent. Real latents are a few units: posterior means of the
# bundled VAE reach |z| = 7.1 and DDIM-50 inversions of the DDPM |x_T| = 10.7, over 16 test
# images plus blank, white, noise and stripe images. Both decoders stay finite to 1e6 and give
# NaN at 1e30 (float32 overflow), so 1000 leaves room for interpolation and extrapolation and
# a wide margin below overflow.
MAX_LATENT_ABS = 1000.0

_IMAGES_DESCRIPTION = (
    "Images, each a base64-encoded PNG (8-bit grayscale, 28x28 for the bundled checkpoints; "
    "a 'data:image/png;base64,' prefix is allowed) or a nested array of integers 0..255 of "
    "shape (H, W) or (C, H, W). A multipart/form-data request may instead upload PNG files, "
    "one 'images' part per image, with the other fields as form fields."
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
    model_config = ConfigDict(extra="forbid")


def _check_method(model: str, method: str | None) -> str:
    if method is None:
        return DEFAULT_METHOD[model]
    if method not in METHODS[model]:
        allowed = " or ".join(repr(m) for m in METHODS[model])
        raise ValueError(f"method: the {model} offers {allowed}, got {method!r}")
    return method


def _check_k(method: str, k: int | None) -> int | None:
    if method not in K_RANGE:
        if k is not None:
            raise ValueError(f"k: only 'iwae' and 'vlb_mc' take k, not {method!r}")
        return None
    low, high = K_RANGE[method]
    if k is None:
        return DEFAULT_K[method]
    if not low <= k <= high:
        raise ValueError(f"k: {method} needs k in {low}..{high}, got {k}")
    return k


class SampleRequest(_Request):
    model: ModelName = Field(description="Which model draws the images.")
    n: int = Field(1, ge=1, le=64, description="How many images to draw.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Random seed: the same seed gives the same images, whatever other "
        "requests share the batch. Omitted: a random seed, returned in the response.",
    )
    sampler: Literal["ddim", "ancestral"] = Field(
        "ddim",
        description="DDPM only: 'ddim' (Song et al. 2020, `steps` steps) or 'ancestral' "
        "(Ho et al. 2020, all T steps; slow on CPU, prefer /sample_task).",
    )
    steps: int = Field(50, ge=1, le=1000, description="DDPM DDIM only: number of denoising steps.")
    # 1 by default: with the bundled DDPM, 50 steps at eta 1 reach a Fréchet distance of 145
    # against 250 at eta 0 and 155 for ancestral sampling (200 images each; README).
    eta: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="DDPM DDIM only: 0 is the deterministic ODE, 1 (default) DDPM-like noise "
        "at each step; the seed decides the images either way.",
    )
    temperature: float = Field(
        1.0, gt=0.0, le=2.0, description="VAE only: prior scale, z ~ N(0, temperature^2 I)."
    )
    sample_pixels: bool = Field(
        False,
        description="VAE only: draw pixels from p(x|z) instead of returning the decoder mean.",
    )
    output: OutputFormat = Field(
        "png",
        description="'png': a list of base64 PNGs; 'grid': one base64 PNG tiling all images; "
        "'array': nested (C, H, W) lists of integers 0..255.",
    )

    @model_validator(mode="after")
    def _options_fit_model(self) -> SampleRequest:
        if self.model == "vae" and self.sampler != "ddim":
            raise ValueError("sampler: the vae has no sampler option; leave it out")
        if (
            self.model == "ddpm"
            and self.sampler == "ancestral"
            and "steps" in self.model_fields_set
        ):
            raise ValueError("steps: ancestral sampling always runs all T steps; leave steps out")
        return self


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
    model: ModelName
    n: int
    seed: int = Field(description="The seed that drew these images (pass it to redraw them).")
    sampler: str | None = Field(None, description="DDPM sampler used; null for the VAE.")
    steps: int | None = Field(None, description="Denoising steps run; null for the VAE.")


class LikelihoodRequest(_Request):
    model: ModelName = Field(description="Which model's bound to evaluate.")
    images: list[str | list[Any]] = Field(
        min_length=1, max_length=MAX_IMAGES, description=_IMAGES_DESCRIPTION
    )
    method: Method | None = Field(
        None,
        description="VAE: 'elbo' (default) or 'iwae' (with k). DDPM: 'vlb_mc' (default, k "
        "stratified timesteps, with a standard error) or 'vlb_exact' (all T terms, T network "
        "calls per image; use /likelihood_task for many images).",
    )
    k: int | None = Field(
        None,
        ge=1,
        le=5000,
        description="iwae: importance samples, 1..5000 (default 100); vlb_mc: timesteps, "
        "2..1998 (default 20). Not used by the other methods.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the bound's Monte-Carlo draws (reproducible)."
    )

    @model_validator(mode="after")
    def _method_fits_model(self) -> LikelihoodRequest:
        self.method = _check_method(self.model, self.method)  # type: ignore[assignment]
        self.k = _check_k(self.method, self.k)
        return self


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
    model: ModelName
    method: Method
    k: int | None
    seed: int
    results: list[ImageBound]


class ScoreRequest(LikelihoodRequest):
    k: int | None = Field(
        None,
        ge=1,
        le=5000,
        description="Defaults to the k the model card's calibration used; another k would "
        "make scores incomparable with the calibrated thresholds.",
    )
    fpr: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Target false-positive rate on normal data; picks the calibrated threshold.",
    )
    correction: Correction = Field(
        "none",
        description="'none': the score is the bound in bits/dim. 'png': the bound minus the "
        "image's PNG codelength in bits/dim (Serra et al. 2019), which discounts how simple "
        "an image is.",
    )

    @model_validator(mode="after")
    def _method_fits_model(self) -> ScoreRequest:
        self.method = _check_method(self.model, self.method)  # type: ignore[assignment]
        if self.k is not None:
            _check_k(self.method, self.k)
        return self


class ImageScore(_Schema):
    score: float = Field(description="Anomaly score in bits/dim (higher is more anomalous).")
    bits_per_dim: float = Field(description="The model's bound in bits/dim.")
    png_bits_per_dim: float = Field(description="The image's optimised PNG size in bits/dim.")
    is_anomaly: bool = Field(description="score > threshold.")
    percentile: float = Field(
        description="Percentage (0..100) of held-out normal images scoring lower."
    )


class ScoreResponse(_Schema):
    model: ModelName
    method: Method
    k: int | None
    correction: Correction
    fpr: float
    threshold: float = Field(description="Calibrated score threshold for `fpr`.")
    calibration_source: str
    calibration_images: int
    results: list[ImageScore]


class EncodeRequest(_Request):
    model: ModelName
    images: list[str | list[Any]] = Field(
        min_length=1, max_length=MAX_IMAGES, description=_IMAGES_DESCRIPTION
    )
    steps: int = Field(
        50, ge=1, le=1000, description="DDPM only: DDIM inversion steps (more is more exact)."
    )
    sample: bool = Field(False, description="VAE only: also return one draw z ~ q(z|x).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="VAE only: seed of that draw.")


class EncodeResponse(_Schema):
    model: ModelName
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
    model: ModelName
    latents: list[list[Any]] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="VAE: a list of latent vectors (Z floats each, Z = the model's latent_dim); "
        "DDPM: a list of x_T arrays of shape (C, H, W), e.g. from /encode. Every value must be "
        f"a finite number with |value| <= {MAX_LATENT_ABS:g} (real latents are a few units): "
        "anything else is a 400 naming its position, e.g. 'latents[0][3]'.",
    )
    steps: int = Field(50, ge=1, le=1000, description="DDPM only: DDIM decoding steps.")
    output: OutputFormat = Field("png", description="As for /sample.")


class DecodeResponse(ImagesPayload):
    model: ModelName


class ModelInfo(_Schema):
    kind: str
    checkpoint: str
    device: str
    config: dict[str, Any]
    card: dict[str, Any] = Field(description="The checkpoint's model card (measured numbers).")


class ModelsResponse(_Schema):
    models: dict[str, ModelInfo]


class ProgressRequest(_Request):
    task_id: str = Field(min_length=1, max_length=128, description="From a task's /submit.")


class ProgressResponse(_Schema):
    task_id: str
    done: int = Field(description="Units of work done (denoising steps or bound rows).")
    total: int
    fraction: float = Field(ge=0.0, le=1.0)
