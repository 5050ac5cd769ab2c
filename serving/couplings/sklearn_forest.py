"""Coupling ``sklearn-forest``: recognise a forest classifier whose ``predict`` is
``classes_.take(argmax(predict_proba(X)))``, so predictions and probabilities come from one
pass over the trees instead of two, with the same labels.

scikit-learn exports no common base of its forest classifiers: ``ForestClassifier`` lives in
the private ``sklearn.ensemble._forest``. Tested versions and the fallback (two passes, as
scikit-learn itself does) are in :data:`serving.couplings.SKLEARN_FOREST`.
"""

from __future__ import annotations

from typing import Any

from serving.couplings import SKLEARN_FOREST, enabled


def votes_by_probabilities(estimator: Any) -> bool:
    """True when ``estimator.predict(X)`` is ``classes_.take(argmax(predict_proba(X)))`` in
    scikit-learn's own code: a single-output forest classifier that does not override
    ``predict``, alone or last in a plain pipeline (whose predict and predict_proba run the
    same transforms first). Always False when the coupling is off."""
    if not enabled(SKLEARN_FOREST):
        return False
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.pipeline import Pipeline

    final = estimator
    if type(estimator) is Pipeline:
        final = estimator.steps[-1][1]
    return (
        isinstance(final, ForestClassifier)
        and type(final).predict is ForestClassifier.predict
        and getattr(final, "n_outputs_", None) == 1
    )
