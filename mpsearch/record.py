"""What a trial records: the names of its Optuna attributes and their JSON form (no torch).

A trial's record lives in the study's storage as Optuna user attributes (and a few
system attributes the drivers keep). Every module that writes or reads them --
the trial itself, the executors and drivers, reports, exports, plots, the
conformance suites -- takes the names from here, so a name is spelled once.
Importing this module imports neither torch nor Optuna.
"""

from __future__ import annotations

import math
from typing import Any

# -- what a trial records about itself (mpsearch.trial) ----------------------------------
ATTR_STRATEGY = "strategy"
ATTR_PARAMS = "strategy_params"
ATTR_TEST_ACCURACY = "test_accuracy"
ATTR_WEIGHT_BITS = "average_weight_bits"
ATTR_ACT_BITS = "average_activation_bits"
ATTR_EPOCHS = "epochs_trained"
ATTR_SECONDS = "seconds"
ATTR_SEED = "seed"
ATTR_ARTEFACTS = "artefacts"
ATTR_FAIL = "fail_reason"
ATTR_UNITS = "units"
ATTR_HISTORY = "history"  # per-epoch metrics, a list of dicts
ATTR_CHECKPOINTS = "checkpoints"
ATTR_CHECKPOINT_WARNING = "checkpoint_warning"
ATTR_START = "start"  # where the trial's model started: float-start, scratch or init
ATTR_START_ACCURACY = "start_accuracy"  # validation accuracy of the float start (NaN without one)
ATTR_HOOK_WARNINGS = "hook_warnings"  # lifecycle hooks that raised during the trial
WIDTHS_PREFIX = "bits."  # history keys "bits.<group>": a group's mean width at the end of an epoch

# -- what the drivers record (mpsearch.execution.driver) ---------------------------------
ATTR_ORPHAN = "orphaned"  # failed because its driver stopped or died; not counted
ATTR_RETRY_OF = "retry_of"  # a re-queued trial: the number of the trial it re-runs
ATTR_GAVE_UP = "gave_up"  # an orphan whose point ran max_retries + 1 times: not re-queued, counted
ATTR_DRIVER_LOST = "driver_lost"  # an orphan whose driver died (not one stopped on Ctrl-C or an error)
SYSTEM_DRIVER = "mpsearch:driver"  # system attribute: HOST:PID of the driver that claimed the trial
SYSTEM_GRACE = "mpsearch:grace"  # system attribute: the trial's grace period in seconds

# -- what the ray executor records (mpsearch.execution.ray_tune) -------------------------
ATTR_RAY_NODE = "ray_node"  # the Ray node that ran the trial (its last attempt)


def json_safe(value: Any, *, cell: bool = False) -> Any:
    """A value as Optuna stores user attributes (JSON): non-finite floats become None.

    Mappings, lists and tuples are converted item by item; anything else that is not a
    string, number, bool or None becomes a float if it converts, else its text.

    Args:
        cell: the value is one cell of a table (a pandas frame being exported): numpy
            scalars become Python numbers, missing values (NaN, NaT, NA) None, and
            anything that is not a string or number (a list, a timestamp) its text.
    """
    if cell:
        return _cell(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _cell(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalars
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    import pandas as pd

    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)
