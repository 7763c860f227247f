"""Markdown tables of the model cards, for the README: `python -m models.report DIR...`.

The README's figures are this module's output pasted verbatim (a test checks they still match
the committed cards), so the numbers people read are the numbers the evaluation measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.core.checkpoints import read_model_card

OUTLIER_COLUMNS = ("digits", "gaussian_noise", "inverted", "blurred", "uniform_noise")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(figure: dict[str, float]) -> str:
    return f"{figure['mean']:.3f} ± {figure['stderr']:.3f}"


def likelihood_rows(name: str, card: dict[str, Any]) -> list[list[str]]:
    lik = card["likelihood"]
    if card["kind"] == "vae":
        terms = (
            f"reconstruction {lik['reconstruction_bits_per_dim']:.3f}, "
            f"KL {lik['kl_bits_per_dim']:.3f}"
        )
        rows = [[name, "-ELBO", str(lik["test_images"]), _pm(lik["elbo_bits_per_dim"]), terms]]
        if "iwae" in lik:
            iwae = lik["iwae"]
            same = _pm(iwae["elbo_bits_per_dim_same_images"])
            rows.append(
                [
                    name,
                    f"IWAE, k = {iwae['k']}",
                    str(iwae["test_images"]),
                    _pm(iwae["iwae_bits_per_dim"]),
                    f"-ELBO on the same images {same}",
                ]
            )
        return rows
    terms = (
        f"L_T {lik['prior_bits_per_dim']:.5f}, sum of L_t {lik['denoising_bits_per_dim']:.3f}, "
        f"L_0 {lik['reconstruction_bits_per_dim']:.3f}"
    )
    bound = f"exact VLB, T = {lik['num_timesteps']}"
    return [[name, bound, str(lik["test_images"]), _pm(lik["vlb_bits_per_dim"]), terms]]


def sample_rows(name: str, card: dict[str, Any]) -> list[list[str]]:
    rows = []
    for sampler, s in card["sample_quality"]["samplers"].items():
        rows.append(
            [
                name,
                sampler,
                str(s["num_samples"]),
                f"{s['frechet_distance']:.2f}",
                f"{s['real_data_floor']:.2f}",
                f"{s['ratio_to_floor']:.1f}x",
                f"{s['seconds_per_image']:.4f}",
            ]
        )
    return rows


def anomaly_rows(name: str, card: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, m in card["anomaly"]["methods"].items():
        k = f" (k = {m['k']})" if m["k"] else ""
        for kind, label in (("raw", "bits/dim"), ("minus_png", "bits/dim - PNG")):
            cells = [
                f"{m['sets'][s][kind]['auroc']:.3f} / {m['sets'][s][kind]['fpr_at_95_tpr']:.3f}"
                for s in OUTLIER_COLUMNS
            ]
            rows.append([name, f"{method}{k}, {label}", str(m["normal_images"]), *cells])
    return rows


def calibration_rows(name: str, card: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, c in card["calibration"].items():
        for kind, entry in c["scores"].items():
            observed = entry["observed_fpr_on_other_normal_images"]
            thresholds = ", ".join(
                f"{float(fpr):.0%}: {t:.3f} (observed {observed[fpr]:.1%})"
                for fpr, t in entry["thresholds"].items()
            )
            rows.append([name, f"{method}, {kind}", str(entry["num_images"]), thresholds or "-"])
    return rows


def markdown(cards: dict[str, dict[str, Any]]) -> str:
    """Four tables (likelihood, samples, anomaly detection, thresholds) for the named cards."""
    sections = [
        _table(
            ["model", "bound", "test images", "bits/dim", "terms (bits/dim)"],
            [r for n, c in cards.items() for r in likelihood_rows(n, c)],
        ),
        _table(
            ["model", "sampler", "samples", "FD", "real-data floor", "ratio", "s/image"],
            [r for n, c in cards.items() for r in sample_rows(n, c)],
        ),
        _table(
            ["model", "score", "normal images", *[f"{s} AUROC / FPR95" for s in OUTLIER_COLUMNS]],
            [r for n, c in cards.items() for r in anomaly_rows(n, c)],
        ),
        _table(
            ["model", "score", "held-out images", "threshold by target FPR (observed FPR)"],
            [r for n, c in cards.items() for r in calibration_rows(n, c)],
        ),
    ]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the model cards as Markdown tables.")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(markdown({path.name: read_model_card(path) for path in args.checkpoints}), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
