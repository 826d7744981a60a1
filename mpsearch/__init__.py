"""mpsearch: search for mixed-precision quantization of neural networks.

``import mpsearch`` stays light: it imports neither Ray nor Optuna and does not
initialise CUDA. The heavy parts load when a command or a trial needs them.
"""

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["PrecisionAssignment", "MpsearchError", "hookimpl", "__version__"]
