"""The conformance suite every precision-search strategy must pass.

Subclass :class:`StrategyTestCase` in a strategy plugin's tests and provide the
``strategy_name`` fixture; optionally ``params`` (what the trials run with),
``stronger_params`` and ``weaker_params`` (two parameter sets of which the first
puts more pressure on cost), ``min_accuracy`` and ``spec_dict``::

    class TestMyStrategy(StrategyTestCase):
        @pytest.fixture
        def strategy_name(self):
            return "my-strategy"

        @pytest.fixture
        def params(self):
            return {"lam": 0.1}

Every trial is a real one, run in-process with :func:`mpsearch.trial.run_trial`:
LeNet-5 on 1,000 images of the embedded MNIST subset, one epoch, on the CPU,
from a float start trained once per test session (``[model] weights``), as a
study's trials start. A trial is run once per distinct (spec, strategy, params)
in a test session and shared by the tests that read it; the reproducibility test
runs its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpsearch.assignment import PrecisionAssignment
from mpsearch.spec import Param, SpecError, StudySpec, parse_spec
from mpsearch.strategy import START_FLOAT, START_SCRATCH
from mpsearch.record import (ATTR_EPOCHS, ATTR_FAIL, ATTR_HISTORY, ATTR_START, ATTR_START_ACCURACY,
                             ATTR_TEST_ACCURACY)
from mpsearch.trial import TrialOutcome, run_trial

PREFIX = "conformance"


@dataclass
class TrialRun:
    """One finished trial of the suite: its spec, outcome and artefacts folder."""

    spec: StudySpec
    strategy: str
    params: dict[str, Any]
    outcome: TrialOutcome
    folder: Path

    def assignment(self) -> PrecisionAssignment:
        """The assignment the trial saved (``trial-00000/assignment.json``)."""
        return PrecisionAssignment.load(self.folder / "trial-00000" / "assignment.json")

    def cost(self, name: str | None = None) -> float:
        """The trial's value of a cost objective (default: the study's first)."""
        return self.outcome.values[name or self.spec.cost_objectives[0]]


FLOAT_START_EPOCHS = 2  # the suite's float start: LeNet-5 on the same 1,000 images


def base_spec(strategy: str, weights: str | None = None) -> dict[str, Any]:
    """The suite's study: small enough for seconds per trial, real enough to learn.

    Args:
        weights: the float start's state dict (``[model] weights``); None starts
            trials from the seeded initialisation.
    """
    return {
        "study": {"name": f"conformance-{strategy}", "objectives": ["accuracy", "bitops", "size"],
                  "n_trials": 1, "seed": 0},
        "model": {"name": "lenet5", **({"weights": weights} if weights else {})},
        "data": {"name": "mnist-mini", "validation_fraction": 0.1, "train_subset": 1000},
        # On the CPU: the reproducibility check needs deterministic kernels.
        "training": {"epochs": 1, "batch_size": 64, "device": "cpu"},
        "strategy": [{"name": strategy}],
        "resources": {"executor": "local"},
    }


def train_float_start(folder: Path) -> str:
    """Train the suite's float start into ``folder`` and return the path of its state dict."""
    from mpsearch.float_start import make_float_start
    from mpsearch.host import PluginHost

    raw = base_spec("uniform")
    raw["training"]["pretrain_epochs"] = FLOAT_START_EPOCHS
    spec = parse_spec(raw)
    record = make_float_start(spec, PluginHost(entry_points=False), Path(folder))
    return record["path"]


def _key(spec: Mapping[str, Any], strategy: str, params: Mapping[str, Any]) -> str:
    return json.dumps([spec, strategy, params], sort_keys=True, default=str)


class StrategyTestCase:
    """Subclass in a strategy plugin's tests; provide the ``strategy_name`` fixture."""

    # -- fixtures a subclass provides or overrides ------------------------------------

    @pytest.fixture
    def strategy_name(self) -> str:  # pragma: no cover - subclasses override
        pytest.fail("provide a strategy_name fixture returning the registered name")

    @pytest.fixture
    def params(self, strategy_name: str, strategy_host) -> dict[str, Any]:
        """Default: one draw from the strategy's default space, by a seeded Optuna sampler."""
        optuna = pytest.importorskip("optuna")
        sampler = optuna.samplers.RandomSampler(seed=0)
        trial = optuna.create_study(sampler=sampler).ask()
        return strategy_host.strategies.get(strategy_name)().suggest(trial, {}, PREFIX)

    @pytest.fixture
    def stronger_params(self) -> dict[str, Any] | None:
        """Parameters that must give a lower cost than ``weaker_params`` (None: not checked)."""
        return None

    @pytest.fixture
    def weaker_params(self) -> dict[str, Any] | None:
        return None

    @pytest.fixture
    def min_accuracy(self) -> float:
        """Validation accuracy the trial with ``params`` must reach (chance is 0.1)."""
        return 0.5

    @pytest.fixture
    def spec_dict(self, strategy_name: str, suite_float_start: str) -> dict[str, Any]:
        return base_spec(strategy_name, weights=suite_float_start)

    # -- the suite's own fixtures -----------------------------------------------------

    @pytest.fixture(scope="session")
    @classmethod
    def suite_float_start(cls, tmp_path_factory) -> str:
        """The float start every suite trial starts from, trained once per session."""
        return train_float_start(tmp_path_factory.mktemp("float-start"))

    @pytest.fixture(scope="session")
    @classmethod
    def strategy_host(cls):
        from mpsearch.host import PluginHost

        return PluginHost(entry_points=False)

    @pytest.fixture(scope="session")
    @classmethod
    def run_strategy_trial(cls, tmp_path_factory) -> Callable[..., TrialRun]:
        """``run(spec_dict, strategy, params, fresh=False)``: a trial, cached unless ``fresh``."""
        cache: dict[str, TrialRun] = {}

        def run(spec_dict: Mapping[str, Any], strategy: str, params: Mapping[str, Any], *,
                fresh: bool = False) -> TrialRun:
            key = _key(spec_dict, strategy, params)
            if fresh or key not in cache:
                spec = parse_spec(json.loads(json.dumps(spec_dict)))
                folder = tmp_path_factory.mktemp(f"trial-{strategy}")
                outcome = run_trial(spec, 0, strategy, dict(params), artefacts=folder)
                done = TrialRun(spec, strategy, dict(params), outcome, folder)
                if fresh:
                    return done
                cache[key] = done
            return cache[key]

        return run

    @pytest.fixture
    def trial(self, run_strategy_trial, spec_dict, strategy_name, params) -> TrialRun:
        done = run_strategy_trial(spec_dict, strategy_name, params)
        if done.outcome.failed:
            pytest.fail(f"the trial failed: {done.outcome.attrs.get(ATTR_FAIL)}")
        return done

    @pytest.fixture
    def context_of(self, strategy_host):
        """``context_of(run) -> (profile, backend, objectives)`` of a finished trial."""
        from mpsearch.models import model_profile
        from mpsearch.trial import load_data

        def get(done: TrialRun):
            train, _, _ = load_data(done.spec)
            profile = model_profile(strategy_host.models.get(done.spec.model.name),
                                    train.num_classes, train.input_shape)
            backend = strategy_host.backends.get(done.spec.backend)
            objectives = {n: strategy_host.objectives.get(n) for n in done.spec.cost_objectives}
            return profile, backend, objectives

        return get

    # -- the contracts ----------------------------------------------------------------

    def test_trial_completes(self, trial: TrialRun):
        assert trial.outcome.values is not None
        assert set(trial.outcome.values) == {"accuracy", *trial.spec.cost_objectives}

    def test_starts_where_it_declares_and_never_pretrains(self, trial: TrialRun, strategy_host,
                                                          strategy_name):
        cls = strategy_host.strategies.get(strategy_name)
        attrs = trial.outcome.attrs
        assert attrs[ATTR_START] == (START_SCRATCH if cls.from_scratch else START_FLOAT)
        if not cls.from_scratch:  # the float start's own accuracy is recorded: it was trained
            assert attrs[ATTR_START_ACCURACY] > 0.5
        phases = [row["phase"] for row in attrs[ATTR_HISTORY]]
        assert "pretrain" not in phases

    def test_the_host_legalises_and_fine_tunes_after_the_search(self, run_strategy_trial, spec_dict,
                                                                strategy_name, params, context_of):
        # The CPU backend runs 8 and 32 bits only: whatever widths the search picks,
        # the host rounds them up, and fine-tuning (the last phase) runs at those.
        raw = json.loads(json.dumps(spec_dict))
        raw["backend"] = {"name": "cpu-int8"}
        done = run_strategy_trial(raw, strategy_name, params)
        assert not done.outcome.failed, done.outcome.attrs.get(ATTR_FAIL)
        profile, backend, _ = context_of(done)
        assert backend.is_legal(done.assignment())
        phases = [row["phase"] for row in done.outcome.attrs[ATTR_HISTORY]]
        if "finetune" in phases:  # nothing of the search after the fine-tuning began
            first = phases.index("finetune")
            assert set(phases[first:]) == {"finetune"}

    def test_post_training_runs_at_zero_epochs_or_is_refused(self, strategy_host, strategy_name,
                                                             spec_dict, params, run_strategy_trial):
        cls = strategy_host.strategies.get(strategy_name)
        raw = json.loads(json.dumps(spec_dict))
        raw["training"]["epochs"] = 0
        if not cls.post_training:
            with pytest.raises(SpecError, match="epochs = 0"):
                parse_spec(raw, host=strategy_host)
            return
        done = run_strategy_trial(raw, strategy_name, params)
        assert not done.outcome.failed, done.outcome.attrs.get(ATTR_FAIL)
        assert done.outcome.attrs[ATTR_EPOCHS] == 0
        assert "finetune" not in [row["phase"] for row in done.outcome.attrs[ATTR_HISTORY]]

    def test_saved_assignment_matches_the_model_and_is_legal(self, trial: TrialRun, context_of):
        profile, backend, _ = context_of(trial)
        assignment = trial.assignment()
        assignment.validate(profile)
        assert backend.is_legal(assignment)

    def test_objectives_equal_their_value_on_the_saved_assignment(self, trial: TrialRun, context_of):
        profile, backend, objectives = context_of(trial)
        assignment = trial.assignment()
        for name, objective in objectives.items():
            expected = objective.evaluate(profile, backend.legalise(assignment), backend)
            assert trial.outcome.values[name] == pytest.approx(expected, rel=1e-9), name
        assert trial.outcome.attrs["average_weight_bits"] == pytest.approx(
            assignment.average_weight_bits())

    def test_accuracy_is_a_probability_and_test_accuracy_is_recorded(self, trial: TrialRun,
                                                                     min_accuracy: float):
        accuracy = trial.outcome.values["accuracy"]
        assert 0.0 <= accuracy <= 1.0
        assert accuracy >= min_accuracy, "the quantized model barely learnt (chance is 0.1)"
        assert 0.0 <= trial.outcome.attrs[ATTR_TEST_ACCURACY] <= 1.0
        epochs = trial.outcome.attrs[ATTR_EPOCHS]
        assert math.isfinite(epochs) and epochs >= 0

    def test_attributes_are_json(self, trial: TrialRun):
        # Optuna keeps user attributes as JSON; a tensor or a numpy scalar would not survive.
        json.dumps(trial.outcome.attrs, allow_nan=False)

    def test_same_seed_and_params_give_the_same_trial(self, trial: TrialRun, run_strategy_trial,
                                                      spec_dict, strategy_name, params):
        again = run_strategy_trial(spec_dict, strategy_name, params, fresh=True)
        assert not again.outcome.failed, again.outcome.attrs.get(ATTR_FAIL)
        assert again.outcome.values["accuracy"] == pytest.approx(
            trial.outcome.values["accuracy"], abs=1e-6)
        assert again.outcome.attrs[ATTR_TEST_ACCURACY] == pytest.approx(
            trial.outcome.attrs[ATTR_TEST_ACCURACY], abs=1e-6)
        assert again.assignment() == trial.assignment()

    def test_stronger_cost_pressure_costs_less(self, run_strategy_trial, spec_dict, strategy_name,
                                               stronger_params, weaker_params):
        if stronger_params is None or weaker_params is None:
            pytest.skip("no stronger_params / weaker_params fixtures given")
        strong = run_strategy_trial(spec_dict, strategy_name, stronger_params)
        weak = run_strategy_trial(spec_dict, strategy_name, weaker_params)
        for done in (strong, weak):
            assert not done.outcome.failed, done.outcome.attrs.get(ATTR_FAIL)
        assert strong.cost() < weak.cost()

    def test_suggest_draws_declared_parameters_under_the_prefix(self, strategy_host, strategy_name):
        optuna = pytest.importorskip("optuna")
        cls = strategy_host.strategies.get(strategy_name)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        drawn = cls().suggest(trial, {}, PREFIX)
        assert set(drawn) <= set(cls.parameters)
        for name in trial.params:
            assert name.startswith(f"{PREFIX}.") and name[len(PREFIX) + 1:] in drawn

    def test_unknown_space_entry_is_a_spec_error(self, strategy_host, strategy_name):
        cls = strategy_host.strategies.get(strategy_name)
        with pytest.raises(SpecError, match="no_such_parameter"):
            cls.check_space({"no_such_parameter": Param(value=1)}, "spec: strategy[0].space")

    def test_has_a_one_line_description(self, strategy_host, strategy_name):
        assert strategy_host.strategies.entry(strategy_name).description
