"""The mistakes training reports to its user as a message and exit code 1, not a traceback.

They live apart from the modules that raise them, which import pandas, scikit-learn or ONNX
Runtime, so the command line can catch them without importing any of those: a command such as
``models`` or ``promote`` then starts in a fraction of the time.
"""


class DataError(Exception):
    """The dataset cannot be used as the spec describes."""


class EstimatorError(Exception):
    """The spec's estimator cannot be imported or built."""


class ScoreError(Exception):
    """The input cannot be scored at all (missing file or columns, unreadable CSV)."""


class ExportError(Exception):
    """The export cannot run (no captured rows, unreadable database, unknown format)."""
