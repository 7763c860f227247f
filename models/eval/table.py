"""A model card's headline figures as a plain two-column table, for the terminal."""

from __future__ import annotations

from models.core.card import BITS_PER_DIM, Estimate, ModelCard


def _pm(figure: Estimate) -> str:
    return f"{figure.mean:.4f} ± {figure.stderr:.4f} bits/dim"


def table_rows(card: ModelCard) -> list[tuple[str, str]]:
    """(figure, value) rows: each bound and its terms, each sampler, each detection, each
    calibrated threshold of the raw bound."""
    rows = []
    for bound in (card.likelihood.headline, *card.likelihood.others):
        k = "" if bound.k is None else f" k={bound.k}"
        rows.append((f"{bound.label}{k}, {bound.test_images} test images", _pm(bound.bits_per_dim)))
        if bound.terms_bits_per_dim:
            terms = bound.terms_bits_per_dim
            rows.append(("  " + " / ".join(terms), " / ".join(f"{v:.5f}" for v in terms.values())))
    if card.sample_quality is not None:
        for name, s in card.sample_quality.samplers.items():
            value = f"{s.frechet_distance:.3f} ({s.real_data_floor:.3f})"
            rows.append((f"FD {name}, {s.num_samples} samples (floor)", value))
            rows.append((f"  seconds per image, {name}", f"{s.seconds_per_image:.4f}"))
    if card.sample_grids is not None:
        rows.append(("sample grids (no Fréchet distance)", ", ".join(card.sample_grids.grids)))
    for name, m in card.anomaly.methods.items():
        for outlier, d in m.sets.items():
            raw, corrected = d.raw, d.minus_png
            value = (
                f"{raw.auroc:.3f} / {corrected.auroc:.3f}   FPR95 "
                f"{raw.fpr_at_95_tpr:.3f} / {corrected.fpr_at_95_tpr:.3f}"
            )
            rows.append((f"AUROC {name} vs {outlier} (raw / -PNG)", value))
    for name, c in card.calibration.items():
        raw_score = c.scores[BITS_PER_DIM]
        thresholds = ", ".join(f"fpr {f}: {t:.4f}" for f, t in raw_score.thresholds.items())
        rows.append((f"threshold {name} ({raw_score.num_images} held-out)", thresholds or "-"))
    return rows


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for figure, value in rows:
        print(f"{figure:<{width}}  {value}")
