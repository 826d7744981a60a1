"""The one tell path: what every executor's result becomes in the study."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from mpsearch.execution.tell import tell
from mpsearch.record import ATTR_FAIL

OBJECTIVES = ["accuracy", "bitops"]


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"])


def test_complete_values_go_in_the_objectives_order_with_the_json_safe_record(study):
    trial = study.ask()
    told = tell(study, trial, OBJECTIVES, {"bitops": 0.25, "accuracy": 0.9},
                {"test_accuracy": 0.8, "start_accuracy": math.nan, "units": {"bitops": "GBitOPs"}})
    (frozen,) = study.trials
    assert told.state == "COMPLETE" and frozen.values == [0.9, 0.25]
    assert frozen.user_attrs == {"test_accuracy": 0.8, "start_accuracy": None,
                                 "units": {"bitops": "GBitOPs"}}


@pytest.mark.parametrize("values", [{"accuracy": 0.9, "bitops": math.nan},
                                    {"accuracy": 0.9},
                                    {"accuracy": math.inf, "bitops": 1.0}])
def test_missing_or_non_finite_values_fail_the_trial_with_the_reason(study, values):
    trial = study.ask()
    told = tell(study, trial, OBJECTIVES, values, {"test_accuracy": 0.8})
    (frozen,) = study.trials
    assert told.state == "FAIL" and frozen.state == TrialState.FAIL
    assert frozen.user_attrs[ATTR_FAIL].startswith("objective values missing or not finite")
    assert frozen.user_attrs["test_accuracy"] == 0.8


def test_a_failed_trial_keeps_its_own_reason_or_gets_one(study):
    tell(study, study.ask(), OBJECTIVES, None, {ATTR_FAIL: "the strategy raised"})
    tell(study, study.ask(), OBJECTIVES, None, {}, reason="its worker died")
    tell(study, study.ask(), OBJECTIVES, None, {})
    assert [t.user_attrs[ATTR_FAIL] for t in study.trials] == [
        "the strategy raised", "its worker died", "the trial failed without a reason"]
