"""Markdown tables of the model cards, for the docs: `python -m models.report DIR...`.

docs/model_cards.md shows this module's output, written there by scripts/docs_pages.py (a test
checks it still matches the committed cards), so the numbers people read are the numbers the
evaluation measured.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.core.card import OUTLIER_SETS, BoundFigure, Estimate, ModelCard
from models.core.checkpoints import read_model_card


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(figure: Estimate) -> str:
    return f"{figure.mean:.3f} ± {figure.stderr:.3f}"


def _bits(value: float) -> str:
    """Three decimals; five for a term too small to show in three (a DDPM's L_T)."""
    return f"{value:.3f}" if abs(value) >= 5e-4 else f"{value:.5f}"


def _bound_row(name: str, bound: BoundFigure, headline: BoundFigure) -> list[str]:
    label = bound.label if bound.k is None else f"{bound.label}, k = {bound.k}"
    notes = [f"{term} {_bits(v)}" for term, v in bound.terms_bits_per_dim.items()]
    if bound.headline_same_images is not None:
        same = _pm(bound.headline_same_images)
        notes.append(f"{headline.label} on the same images {same}")
    return [name, label, str(bound.test_images), _pm(bound.bits_per_dim), ", ".join(notes)]


def likelihood_rows(name: str, card: ModelCard) -> list[list[str]]:
    headline = card.likelihood.headline
    bounds = (headline, *card.likelihood.others)
    return [_bound_row(name, bound, headline) for bound in bounds]


def sample_rows(name: str, card: ModelCard) -> list[list[str]]:
    if card.sample_quality is None:
        return []
    return [
        [
            name,
            sampler,
            str(s.num_samples),
            f"{s.frechet_distance:.2f}",
            f"{s.real_data_floor:.2f}",
            f"{s.ratio_to_floor:.1f}x",
            f"{s.seconds_per_image:.4f}",
        ]
        for sampler, s in card.sample_quality.samplers.items()
    ]


def outlier_columns(cards: Mapping[str, ModelCard]) -> list[str]:
    """The outlier sets of the cards: Fashion-MNIST's in their table order, then any other
    (your own folders) in the order the cards name them."""
    named = [s for card in cards.values() for s in card.anomaly.outlier_sets]
    return [s for s in OUTLIER_SETS if s in named] + list(
        dict.fromkeys(s for s in named if s not in OUTLIER_SETS)
    )


def anomaly_rows(name: str, card: ModelCard, columns: list[str] | None = None) -> list[list[str]]:
    """One row per score and correction; a set the card did not measure shows as '-'."""
    rows = []
    for method, m in card.anomaly.methods.items():
        k = f" (k = {m.k})" if m.k else ""
        for label, corrected in (("bits/dim", False), ("bits/dim - PNG", True)):
            cells = []
            for s in outlier_columns({name: card}) if columns is None else columns:
                if s not in m.sets:
                    cells.append("-")
                    continue
                d = m.sets[s].minus_png if corrected else m.sets[s].raw
                cells.append(f"{d.auroc:.3f} / {d.fpr_at_95_tpr:.3f}")
            rows.append([name, f"{method}{k}, {label}", str(m.normal_images), *cells])
    for method, c in card.calibration.items():  # the Likelihood Regret, where measured
        regret = c.likelihood_regret
        if regret is None or not regret.detection:
            continue
        cells = []
        for s in outlier_columns({name: card}) if columns is None else columns:
            d = regret.detection[s].regret if s in regret.detection else None
            cells.append("-" if d is None else f"{d.auroc:.3f} / {d.fpr_at_95_tpr:.3f}")
        label = f"{method}, likelihood regret ({regret.steps} steps)"
        rows.append([name, label, str(regret.detection_normal_images), *cells])
    return rows


def calibration_rows(name: str, card: ModelCard) -> list[list[str]]:
    rows = []
    for method, c in card.calibration.items():
        for kind, entry in c.scores.items():
            observed = entry.observed_fpr_on_other_normal_images
            thresholds = ", ".join(
                f"{float(fpr):.0%}: {t:.3f} (observed {observed[fpr]:.1%})"
                for fpr, t in entry.thresholds.items()
            )
            rows.append([name, f"{method}, {kind}", str(entry.num_images), thresholds or "-"])
        if (regret := c.likelihood_regret) is not None:
            entry = regret.calibration
            observed = entry.observed_fpr_on_other_normal_images or {}
            thresholds = ", ".join(
                f"{float(fpr):.0%}: {t:.4f}"
                + (f" (observed {observed[fpr]:.1%})" if fpr in observed else "")
                for fpr, t in entry.thresholds.items()
            )
            label = f"{method}, likelihood regret ({regret.steps} steps)"
            rows.append([name, label, str(entry.num_images), thresholds or "-"])
    return rows


def markdown(cards: Mapping[str, ModelCard | Mapping[str, Any]]) -> str:
    """Four tables (likelihood, samples, anomaly detection, thresholds) for the named cards
    (typed, or as the JSON objects they are stored as)."""
    cards = {n: c if isinstance(c, ModelCard) else ModelCard.from_dict(c) for n, c in cards.items()}
    columns = outlier_columns(cards)
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
            ["model", "score", "normal images", *[f"{s} AUROC / FPR95" for s in columns]],
            [r for n, c in cards.items() for r in anomaly_rows(n, c, columns)],
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
