"""The promotion gate: a new version replaces production only when it is better beyond noise.

Every comparison is paired over the same cross-validation folds of the candidate's training
part (training/folds.py): the candidate, its trivial baseline and production's pipeline
(an unfitted clone of the stored model, refitted on each fold) are scored on exactly the same
rows. For the primary metric, with ``d_i`` the candidate's score minus the other's on fold
``i`` (signs turned so that positive means the candidate is better), ``k`` folds, mean ``d``
and sample standard deviation ``s``:

    noise  = t(1 - significance, k - 1) * s * sqrt(1/k + n_validate/n_fit)
    better = d > max(margin, noise)

``noise`` is the one-sided critical value of the corrected resampled paired t-test (Nadeau &
Bengio, 2003): fold scores share most of their training rows, so the naive ``s/sqrt(k)``
understates the spread; ``n_validate/n_fit`` (1/(k-1) for k-fold) corrects for it.

- Against the baseline the margin is 0: a model not better than the trivial baseline (the
  stronger of DummyClassifier most_frequent / stratified for the primary metric, or
  DummyRegressor mean) is never promoted, not even as a model's first version.
- Against production the margin is the spec's ``evaluation.tolerance``: the smallest
  improvement worth a swap. A candidate within fold noise of production stays unpromoted.
- When production cannot be refitted on the candidate's folds (its features or input format
  differ), the recorded cross-validation figures are compared unpaired, with
  ``noise = t * sqrt(s_c^2 + s_p^2) * sqrt(1/k + n_validate/n_fit)``; without recorded folds,
  the holdout figures with the tolerance alone, and the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.store import Manifest


@dataclass(frozen=True)
class Comparison:
    """The candidate against one other model on the primary metric."""

    against: str
    metric: str
    difference: float
    """Mean improvement of the candidate (positive: better), in metric units."""
    noise: float
    margin: float
    method: str

    @property
    def better(self) -> bool:
        return self.difference > max(self.margin, self.noise)

    def describe(self) -> str:
        verdict = "better" if self.better else "not better"
        return (
            f"{verdict} than {self.against}: {self.metric} {self.difference:+.4f} "
            f"(needs > {max(self.margin, self.noise):.4f}: noise {self.noise:.4f}, "
            f"margin {self.margin:g}; {self.method})"
        )


def _noise(spread: float, k: int, significance: float, validate_to_fit: float) -> float:
    """The one-sided t bound of a difference over ``k`` folds whose spread is ``spread``,
    corrected for the overlap of the folds' training parts (Nadeau and Bengio)."""
    from scipy.stats import t

    critical = float(t.ppf(1.0 - significance, k - 1))
    return critical * spread * math.sqrt(1 / k + validate_to_fit)


def paired(
    against: str,
    metric: str,
    candidate: list[float],
    other: list[float],
    *,
    higher_is_better: bool,
    margin: float,
    significance: float,
    validate_to_fit: float,
) -> Comparison:
    """Corrected paired t-test over folds (see the module docstring)."""
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (c - o) for c, o in zip(candidate, other, strict=True)]
    k = len(diffs)
    mean = sum(diffs) / k
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (k - 1)) if k > 1 else 0.0
    noise = _noise(sd, k, significance, validate_to_fit)
    return Comparison(against, metric, mean, noise, margin, f"paired over {k} folds")


def unpaired(
    against: str,
    metric: str,
    candidate: tuple[float, float],
    other: tuple[float, float],
    *,
    k: int,
    higher_is_better: bool,
    margin: float,
    significance: float,
    validate_to_fit: float,
) -> Comparison:
    """Recorded (mean, std) over folds of two models that could not share folds."""
    sign = 1.0 if higher_is_better else -1.0
    spread = math.sqrt(candidate[1] ** 2 + other[1] ** 2)
    noise = _noise(spread, k, significance, validate_to_fit)
    return Comparison(
        against,
        metric,
        sign * (candidate[0] - other[0]),
        noise,
        margin,
        "recorded fold means, not paired: production could not be refitted on these folds",
    )


def holdout_only(
    against: str,
    metric: str,
    candidate: float,
    other: float,
    *,
    higher_is_better: bool,
    margin: float,
) -> Comparison:
    sign = 1.0 if higher_is_better else -1.0
    return Comparison(
        against,
        metric,
        sign * (candidate - other),
        0.0,
        margin,
        "holdout figures only: production has no fold scores and could not be refitted",
    )


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    production: Manifest | None
    """The production version compared against (None when there was none)."""
    baseline: Comparison | None = None
    versus_production: Comparison | None = None
    production_cv: dict[str, float] | None = None
    """Production's cv_<metric>_mean/_std re-evaluated on the candidate's folds, if it was."""

    def comparison(self, candidate: Manifest) -> str:
        """Side-by-side metrics of production and the candidate, as a text table."""
        prod = self.production
        prod_metrics = {**(prod.metrics if prod else {}), **(self.production_cv or {})}
        names = sorted(n for n in candidate.metrics if not n.startswith("baseline_"))
        head = f"v{prod.version} (production)" if prod else "(no production)"
        lines = [f"    {'metric':<18} {head:>18} {f'v{candidate.version} (new)':>18}"]
        for name in names:
            old = f"{prod_metrics[name]:.4f}" if name in prod_metrics else "-"
            new = f"{candidate.metrics[name]:.4f}"
            marker = "  <- primary" if name == f"cv_{candidate.primary_metric}_mean" else ""
            lines.append(f"    {name:<18} {old:>18} {new:>18}{marker}")
        if self.production_cv:
            lines.append("    (production's cv_* re-evaluated on the new version's folds)")
        return "\n".join(lines)


def decide(
    baseline: Comparison,
    production: Manifest | None,
    versus_production: Comparison | None,
    production_cv: dict[str, float] | None = None,
) -> GateDecision:
    """Promote when the candidate beats its baseline and, if there is one, production."""
    if not baseline.better:
        return GateDecision(
            False,
            baseline.describe(),
            production,
            baseline,
            versus_production,
            production_cv,
        )
    if production is None or versus_production is None:
        return GateDecision(
            True,
            f"no production version yet; {baseline.describe()}",
            None,
            baseline,
            None,
        )
    if not versus_production.better:
        return GateDecision(
            False,
            f"{versus_production.describe()}",
            production,
            baseline,
            versus_production,
            production_cv,
        )
    return GateDecision(
        True, versus_production.describe(), production, baseline, versus_production, production_cv
    )
