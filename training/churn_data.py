"""Generate the shipped mixed-type example table (training/data/churn.csv), deterministically.

A synthetic telecom churn table with numeric, integer, boolean and categorical columns; churn
follows a known logistic rule plus noise, so a good model is learnable but not perfect.
Regenerate with ``python -m training.churn_data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CHURN_CSV = Path(__file__).parent / "data" / "churn.csv"


def generate(rows: int = 2000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    contract = rng.choice(["month-to-month", "one-year", "two-year"], rows, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["dsl", "fiber", "none"], rows, p=[0.4, 0.45, 0.15])
    payment = rng.choice(["bank-transfer", "credit-card", "electronic-check", "mailed-check"], rows)
    tenure = rng.integers(0, 73, rows)
    senior = rng.random(rows) < 0.16
    base = np.select([internet == "fiber", internet == "dsl"], [80.0, 55.0], 25.0)
    monthly = np.round(base + rng.normal(0, 12, rows).clip(-20, 30), 2)
    support_calls = rng.poisson(1.2, rows)
    logit = (
        -1.2
        + 1.4 * (contract == "month-to-month")
        - 1.1 * (contract == "two-year")
        + 0.7 * (internet == "fiber")
        + 0.6 * (payment == "electronic-check")
        + 0.45 * senior
        - 0.045 * tenure
        + 0.018 * (monthly - 60)
        + 0.35 * support_calls
        + rng.normal(0, 0.6, rows)
    )
    churn = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "support_calls": support_calls,
            "senior_citizen": senior,
            "contract": contract,
            "internet_service": internet,
            "payment_method": payment,
            "churn": churn,
        }
    )


def main() -> None:
    CHURN_CSV.parent.mkdir(parents=True, exist_ok=True)
    generate().to_csv(CHURN_CSV, index=False, lineterminator="\n")
    print(f"wrote {CHURN_CSV}")


if __name__ == "__main__":
    main()
