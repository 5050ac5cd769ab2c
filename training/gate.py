"""The promotion gate: a new version replaces production only if it is not worse."""

from __future__ import annotations

from dataclasses import dataclass

from serving.store import Manifest, ModelStore


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    production: Manifest | None
    """The production version compared against (None when there was none)."""

    def comparison(self, candidate: Manifest) -> str:
        """Side-by-side metrics of production and the candidate, as a text table."""
        prod = self.production
        names = sorted(set(candidate.metrics) | set(prod.metrics if prod else {}))
        head = f"v{prod.version} (production)" if prod else "(no production)"
        lines = [f"    {'metric':<10} {head:>18} {f'v{candidate.version} (new)':>18}"]
        for name in names:
            old = f"{prod.metrics[name]:.4f}" if prod and name in prod.metrics else "-"
            new = f"{candidate.metrics[name]:.4f}" if name in candidate.metrics else "-"
            marker = "  <- primary" if name == candidate.primary_metric else ""
            lines.append(f"    {name:<10} {old:>18} {new:>18}{marker}")
        return "\n".join(lines)


def decide(store: ModelStore, candidate: Manifest, *, tolerance: float) -> GateDecision:
    """Compare the candidate's primary metric with production's, allowing ``tolerance``."""
    current = store.production(candidate.name)
    if current is None or current == candidate.version:
        return GateDecision(True, "no production version yet", None)
    prod = store.manifest(candidate.name, current)
    metric = candidate.primary_metric
    if metric not in prod.metrics or prod.primary_metric != metric:
        return GateDecision(
            False,
            f"production v{prod.version} is judged by {prod.primary_metric!r}, the new version "
            f"by {metric!r}: not comparable, promote by hand if intended",
            prod,
        )
    new, old = candidate.metrics[metric], prod.metrics[metric]
    worse_by = (old - new) if candidate.higher_is_better else (new - old)
    if worse_by <= tolerance + 1e-12:
        return GateDecision(
            True,
            f"{metric} {new:.4f} vs production {old:.4f} (tolerance {tolerance})",
            prod,
        )
    return GateDecision(
        False,
        f"{metric} {new:.4f} is worse than production v{prod.version}'s {old:.4f} by "
        f"{worse_by:.4f}, beyond the tolerance {tolerance}",
        prod,
    )
