"""The conformance suite every executor must pass (see :class:`mpsearch.execution.base.Executor`).

Subclass :class:`ExecutorTestCase` in a plugin's tests and name the executor (and the
plugins that register it)::

    class TestPoolExecutor(ExecutorTestCase):
        executor = "pool"
        plugins = ("my_package.executor_plugin",)

It runs a tiny real study (LeNet-5 on the embedded ``mnist-mini``, a fraction of an
epoch per trial) with this module's own ``conformance`` strategy and
``conformance-cost`` objective, and checks the contract: exactly ``n_trials`` counted
trials and none left RUNNING; every COMPLETE trial carries the trial record and
finite values in the objectives' order; a trial whose strategy raises, or whose
objective is NaN, ends FAIL with its reason; a late result for a trial another driver
failed as stale is dropped and the re-queued copy counts; numbering continues on a
second run; no heartbeat outlives the run.

This module is also the plugin that registers the strategy and the objective: the
suite loads it by its dotted name, so trials in other processes load it too.
"""

from __future__ import annotations

import math
import textwrap
import threading
import time
from typing import Any

import pytest
import torch

from mpsearch.hookspecs import hookimpl
from mpsearch.objectives import Objective, weight_bits_total
from mpsearch.record import (
    ATTR_FAIL,
    ATTR_HISTORY,
    ATTR_ORPHAN,
    ATTR_PARAMS,
    ATTR_RETRY_OF,
    ATTR_SECONDS,
    ATTR_SEED,
    ATTR_STRATEGY,
    ATTR_TEST_ACCURACY,
    ATTR_WEIGHT_BITS,
)
from mpsearch.spec import Param
from mpsearch.strategy import SearchResult, Strategy

STRATEGY = "conformance"
COST = "conformance-cost"
NAN_BITS = 3  # the cost objective is NaN for a uniform 3-bit assignment
RAISED = "the conformance strategy was told to raise"
SLOW_SECONDS = 4.0  # long enough for the suite to fail the trial as stale while it runs
RECORD = (ATTR_STRATEGY, ATTR_PARAMS, ATTR_SEED, ATTR_SECONDS, ATTR_HISTORY, ATTR_TEST_ACCURACY,
          ATTR_WEIGHT_BITS)
# the enqueued points, in order, and what becomes of each
POINTS = ({"bits": 4, "behaviour": "ok"}, {"bits": 8, "behaviour": "raise"},
          {"bits": NAN_BITS, "behaviour": "ok"}, {"bits": 8, "behaviour": "slow"})


class ConformanceStrategy(Strategy):
    """Uniform widths trained for one epoch of a small subset; raises or stalls on demand."""

    parameters = {
        "bits": Param(choices=(NAN_BITS, 4, 8)),
        "behaviour": Param(value="ok"),  # ok | raise | slow
    }

    def search(self, context, params):
        from mpsearch.assignment import PrecisionAssignment
        from mpsearch.quant import quantize_at

        if params["behaviour"] == "raise":
            raise RuntimeError(RAISED)
        if params["behaviour"] == "slow":
            time.sleep(SLOW_SECONDS)
        bits = params["bits"]
        a = context.legalise(PrecisionAssignment.uniform(context.profile, bits, bits))
        model = quantize_at(context.model, context.profile, a, "minmax")
        context.fit(model, 1.0)
        return SearchResult(model, a, 0.0, {})


class ConformanceCost(Objective):
    """Weight bits in kbit; NaN for a uniform 3-bit assignment (to test the NaN check)."""

    unit = "kbit"
    description = "weight bits in kbit (NaN at 3 bits; conformance tests only)"

    def differentiable(self, profile, bits, scale_bits=None) -> torch.Tensor:
        widths = torch.cat([torch.as_tensor(b, dtype=torch.float32).flatten() for b in bits.values()])
        if torch.all(widths == NAN_BITS):
            return torch.tensor(float("nan"))
        return weight_bits_total(profile, bits, None) / 1e3


@hookimpl
def register_strategies(register):
    register(STRATEGY, ConformanceStrategy)


@hookimpl
def register_objectives(register):
    register(COST, ConformanceCost())


def _spec_text(name: str, executor: str, n_trials: int) -> str:
    points = ", ".join("{" + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in p.items()) + "}"
                       for p in POINTS)
    return textwrap.dedent(f"""\
        [study]
        name = "{name}"
        objectives = ["accuracy", "{COST}"]
        sampler = "random"
        n_trials = {n_trials}
        seed = 5
        [model]
        name = "lenet5"
        [data]
        name = "mnist-mini"
        train_subset = 1000
        [training]
        epochs = 1
        batch_size = 100
        [[strategy]]
        name = "{STRATEGY}"
        space.behaviour = ["ok", "raise", "slow"]
        enqueue = [{points}]
        [resources]
        executor = "{executor}"
        """)


class _Stale(threading.Thread):
    """Another driver, as seen by the executor: fails the slow trial as stale once, while it runs."""

    def __init__(self, url: str, name: str):
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.done = threading.Event()
        self.failed: int | None = None

    def run(self) -> None:
        import optuna
        from optuna.trial import TrialState

        from mpsearch.execution.driver import orphan
        from mpsearch.optuna_private import study_id, study_storage, trial_id
        from mpsearch.execution.lock import study_lock

        while not self.done.is_set() and self.failed is None:
            study = optuna.load_study(study_name=self.name, storage=self.url)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.params.get(f"{STRATEGY}.behaviour") == "slow" and ATTR_RETRY_OF not in t.user_attrs:
                    with study_lock(study_storage(study), study_id(study)):
                        self.failed = orphan(study, trial_id(t), "failed as stale by the conformance "
                                                                 "suite", max_retries=None)
                    break
            time.sleep(0.2)


class ExecutorTestCase:
    """Subclass in an executor plugin's tests; set :attr:`executor` and :attr:`plugins`."""

    executor: str = "local"
    plugins: tuple[str, ...] = ()  # modules or .py files that register the executor
    n_trials = len(POINTS)
    timeout = 600.0  # seconds a run may take before the suite calls it hung
    heartbeat = 0.5

    # -- running the study once per class ------------------------------------------------

    @classmethod
    def _host(cls):
        from mpsearch.host import PluginHost

        return PluginHost((*cls.plugins, __name__), entry_points=False)

    @classmethod
    def _run(cls, host, name: str, url: str, **kw) -> None:
        from mpsearch.study import run_study

        errors: list[BaseException] = []

        def target() -> None:
            try:
                run_study(name, url, host, executor=cls.executor, progress=False,
                          heartbeat=cls.heartbeat, grace=60.0, **kw)
            except BaseException as exc:  # noqa: BLE001 - reported in the test's thread
                errors.append(exc)

        runner = threading.Thread(target=target, daemon=True)
        runner.start()
        runner.join(cls.timeout)
        assert not runner.is_alive(), f"executor {cls.executor!r} did not return in {cls.timeout:g} s"
        if errors:
            raise errors[0]

    @pytest.fixture(scope="class")
    @classmethod
    def study_run(cls, tmp_path_factory) -> dict[str, Any]:
        from dataclasses import replace

        import optuna

        from mpsearch.spec import load_spec
        from mpsearch.study import create_study

        folder = tmp_path_factory.mktemp(f"executor-{cls.executor}")
        url, name = f"sqlite:///{folder / 'mpsearch.db'}", "conformance"
        host = cls._host()
        path = folder / "spec.toml"
        path.write_text(_spec_text(name, cls.executor, cls.n_trials))
        spec = replace(load_spec(path, host), plugins=host.sources)
        create_study(spec, url, host)
        stale = _Stale(url, name)
        stale.start()
        try:
            cls._run(host, name, url)
        finally:
            stale.done.set()
            stale.join(10)
        study = optuna.load_study(study_name=name, storage=url)
        return {"host": host, "url": url, "name": name, "study": study,
                "trials": study.get_trials(deepcopy=False), "stale": stale.failed}

    # -- the contract ------------------------------------------------------------------------

    def test_runs_exactly_n_counted_trials_and_leaves_none_running(self, study_run):
        from optuna.trial import TrialState

        from mpsearch.execution.driver import counted_count

        trials = study_run["trials"]
        assert counted_count(study_run["study"]) == self.n_trials
        assert [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []
        assert [t.number for t in trials] == list(range(len(trials)))

    def test_complete_trials_carry_the_record_and_finite_values_in_order(self, study_run):
        from optuna.trial import TrialState

        done = [t for t in study_run["trials"] if t.state == TrialState.COMPLETE]
        assert len(done) == 2  # the "ok" point and the re-queued slow one
        for t in done:
            assert all(key in t.user_attrs for key in RECORD), sorted(t.user_attrs)
            assert ATTR_FAIL not in t.user_attrs
            accuracy, cost = t.values
            assert all(math.isfinite(v) for v in t.values)
            assert 0.0 <= accuracy <= 1.0
            # the cost is the weight bits in kbit: 8-bit weights cost twice 4-bit ones
            bits = t.params[f"{STRATEGY}.bits"]
            assert cost > 1.0 and t.user_attrs[ATTR_WEIGHT_BITS] == pytest.approx(bits)
        by_bits = {t.params[f"{STRATEGY}.bits"]: t.values[1] for t in done}
        assert by_bits[8] == pytest.approx(2 * by_bits[4], rel=0.05)

    def test_a_failing_strategy_and_a_nan_objective_end_fail_with_their_reason(self, study_run):
        from optuna.trial import TrialState

        by_point = {(t.params.get(f"{STRATEGY}.bits"), t.params.get(f"{STRATEGY}.behaviour")): t
                    for t in study_run["trials"] if ATTR_RETRY_OF not in t.user_attrs}
        raised = by_point[(8, "raise")]
        assert raised.state == TrialState.FAIL and RAISED in raised.user_attrs[ATTR_FAIL]
        nan = by_point[(NAN_BITS, "ok")]
        assert nan.state == TrialState.FAIL and nan.values is None
        assert nan.user_attrs.get(ATTR_FAIL), "a NaN objective must fail the trial with a reason"

    def test_a_late_result_is_dropped_and_the_requeued_copy_counts(self, study_run):
        from optuna.trial import TrialState

        number = study_run["stale"]
        assert number is not None, "the slow trial was never seen RUNNING"
        trials = {t.number: t for t in study_run["trials"]}
        late = trials[number]
        assert late.state == TrialState.FAIL and late.user_attrs.get(ATTR_ORPHAN) is True
        assert ATTR_TEST_ACCURACY not in late.user_attrs  # nothing of the late result
        retries = [t for t in trials.values() if t.user_attrs.get(ATTR_RETRY_OF) == number]
        assert [t.state for t in retries] == [TrialState.COMPLETE]

    def test_no_heartbeat_outlives_the_run(self, study_run):
        import sqlalchemy

        from mpsearch.optuna_private import heartbeat_table, rdb_storage, study_storage

        assert not [t for t in threading.enumerate() if t.name == "mpsearch-heartbeat" and t.is_alive()]
        table = heartbeat_table()
        engine = rdb_storage(study_storage(study_run["study"])).engine

        def beats():
            with engine.connect() as conn:
                return sorted(conn.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat)).all())

        before = beats()
        time.sleep(3 * self.heartbeat)
        assert beats() == before

    def test_numbering_continues_on_a_second_run(self, study_run):
        import optuna

        from mpsearch.execution.driver import counted_count

        before = len(study_run["trials"])
        self._run(study_run["host"], study_run["name"], study_run["url"], n_trials=1)
        study = optuna.load_study(study_name=study_run["name"], storage=study_run["url"])
        assert [t.number for t in study.trials] == list(range(before + 1))
        assert counted_count(study) == self.n_trials + 1
