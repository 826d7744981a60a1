"""mpsearch: search for mixed-precision quantization of neural networks.

``import mpsearch`` stays light: it imports neither Ray nor Optuna and does not
initialise CUDA. The heavy parts load when a command or a trial needs them.
"""

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.hookspecs import hookimpl

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
