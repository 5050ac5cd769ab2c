"""Exact per-feature contributions of a served pipeline's output: a linear model's terms
around the training mean, or a tree ensemble's path-dependent TreeSHAP values, summed back from
the preprocessed columns to the input features.

:func:`background` runs at training time and its :class:`Background` is stored with the model;
:class:`Explainer` uses it to explain rows at serving time.
"""

from serving.explain.groups import column_groups
from serving.explain.methods import (
    SPACES,
    Background,
    Explainer,
    UnsupportedExplanation,
    background,
    output_of,
)

__all__ = [
    "SPACES",
    "Background",
    "Explainer",
    "UnsupportedExplanation",
    "background",
    "column_groups",
    "output_of",
]
