"""mpsearch: search for mixed-precision quantization of neural networks.

``import mpsearch`` stays light: it imports neither Ray nor Optuna nor torch and does
not initialise CUDA (``PrecisionAssignment`` loads torch when first named). The heavy
parts load when a command or a trial needs them.
"""

from typing import TYPE_CHECKING, Any

from mpsearch.errors import MpsearchError
from mpsearch.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from mpsearch.assignment import PrecisionAssignment

__version__ = "0.1.0"
__all__ = ["PrecisionAssignment", "MpsearchError", "hookimpl", "load_trial", "__version__"]


def load_trial(study, trial: int, storage: str | None = None, host=None):
    """A COMPLETE trial's quantized model, its assignment and what the study recorded.

    Returns a :class:`mpsearch.export.TrialModel` ``(model, assignment, metadata)``; the
    model is rebuilt from the trial's packed file and computes what the trial's model
    computed. See :func:`mpsearch.export.load_trial`.
    """
    from mpsearch.export import load_trial as load

    return load(study, trial, storage=storage, host=host)


def __getattr__(name: str) -> Any:
    if name == "PrecisionAssignment":  # torch, only when asked for
        from mpsearch.assignment import PrecisionAssignment

        return PrecisionAssignment
    raise AttributeError(f"module 'mpsearch' has no attribute {name!r}")
