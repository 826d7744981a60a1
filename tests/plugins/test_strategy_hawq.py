"""The ``hawq`` strategy: conformance, the ILP against brute force, budgets, legal widths, infeasibility."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpsearch.plugins.strategy_hawq import (
    BUDGET_SLACK,
    Budget,
    HawqStrategy,
    InfeasibleBudget,
    legal_widths,
    parse_budgets,
    plan_widths,
    solve_ilp,
)

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.sensitivity import SensitivityTable
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase
from mpsearch.record import ATTR_FAIL, ATTR_HISTORY
from mpsearch.trial import run_trial

# Few Hessian passes on few images: the suite's trials take seconds on a CPU.
QUICK = {"hessian_images": 128, "max_iterations": 3}
PARAMS = {"budget": 0.3, **QUICK}

HOST = PluginHost(entry_points=False)
PROFILE = model_profile(HOST.models.get("lenet5"), 10, (1, 28, 28))
BITOPS = HOST.objectives.get("bitops")


def lenet_bitops(weight_bits: int, act_bits: int) -> float:
    return BITOPS.evaluate(PROFILE, PrecisionAssignment.uniform(PROFILE, weight_bits, act_bits))


class TestHawqConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "hawq"

    @pytest.fixture
    def params(self):
        return PARAMS

    @pytest.fixture
    def stronger_params(self):
        return {**PARAMS, "budget": 0.12}

    @pytest.fixture
    def weaker_params(self):
        return {**PARAMS, "budget": 0.5}

    def test_the_host_legalises_and_fine_tunes_after_the_search(self, run_strategy_trial, spec_dict,
                                                                strategy_name, params, context_of):
        # The suite's version, for a strategy that only ever picks legal widths: the CPU
        # backend runs 8 and 32 bits, so within 2-8 bits only 8 is legal. A budget below the
        # 8-bit cost cannot be met (the trial fails, saying why); at that cost it runs at 8
        # bits, legal, and fine-tunes last.
        raw = json.loads(json.dumps(spec_dict))
        raw["backend"] = {"name": "cpu-int8"}
        refused = run_strategy_trial(raw, strategy_name, params)
        reason = refused.outcome.attrs.get(ATTR_FAIL, "")
        assert refused.outcome.failed and "cannot be met" in reason and "\n" not in reason
        assert "8-bit weights, 8-bit inputs" in reason
        done = run_strategy_trial(raw, strategy_name, {**params, "budget": 1.0})
        assert not done.outcome.failed, done.outcome.attrs.get(ATTR_FAIL)
        _, backend, _ = context_of(done)
        assert backend.is_legal(done.assignment())
        assert {int(b) for b in done.assignment().values()} == {8}
        assert [row["phase"] for row in done.outcome.attrs[ATTR_HISTORY]] == ["finetune"]

    def test_the_budget_holds_and_the_search_trains_nothing(self, trial):
        attrs = trial.outcome.attrs
        reference = lenet_bitops(8, 8)
        assert attrs["reference_cost"] == pytest.approx(reference)
        assert attrs["budget"] == pytest.approx(0.3 * reference)
        assert trial.cost("bitops") <= attrs["budget"] * (1 + BUDGET_SLACK)
        (bitops,) = attrs["budgets"]
        # BitOPs are additive over layers: the ILP's linear model is the real cost.
        assert bitops["predicted"] == pytest.approx(bitops["cost"], rel=1e-12)
        assert bitops["cost"] == pytest.approx(trial.cost("bitops"), rel=1e-12)
        assert attrs["epochs_trained"] == 1.0  # all of it fine-tuning: the search trains nothing
        assert [row["phase"] for row in attrs[ATTR_HISTORY]] == ["finetune"]
        assert attrs["hessian_seconds"] + attrs["ilp_seconds"] <= attrs["search_seconds"]
        widths = {int(b) for b in trial.assignment().values()}
        assert widths <= set(range(2, 9)) and len(widths) > 1  # mixed precision

    def test_the_recorded_table_gives_the_recorded_omega(self, trial):
        attrs = trial.outcome.attrs
        table = SensitivityTable.from_dict(attrs["sensitivity"])
        assert [r.layer for r in table.layers] == ["conv1", "conv2", "fc1", "fc2"]
        assert table.images == 128 and table.iterations == 3
        assert all(r.input_trace is not None for r in table.layers)  # act_bits = 0: inputs searched
        assert table.total(trial.assignment()) == pytest.approx(attrs["omega"], rel=1e-9)


# -- the ILP against enumeration --------------------------------------------------------

def brute_force(omega, costs, limits, scales):
    """The least Σ Ω over every choice meeting the limits (the ILP's rule), or None."""
    best = None
    for choice in itertools.product(*(range(len(o)) for o in omega)):
        if all(sum(per_layer[l][j] for l, j in enumerate(choice)) <= limit + BUDGET_SLACK * scale
               for per_layer, limit, scale in zip(costs, limits, scales)):
            value = sum(omega[l][j] for l, j in enumerate(choice))
            if best is None or value < best[1]:
                best = (list(choice), value)
    return best


def total(table, choice):
    return sum(table[l][j] for l, j in enumerate(choice))


# Widths chosen among few values make ties; exact zeros are common (an insensitive layer).
omegas = st.floats(0, 1000, allow_nan=False) | st.sampled_from([0.0, 1.0, 2.0, 1e-9])
costs = st.floats(0, 100, allow_nan=False) | st.sampled_from([0.0, 1.0, 4.0])


@st.composite
def problems(draw, budgets=None):
    layers = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 4)) for _ in range(layers)]
    k = budgets or draw(st.integers(1, 2))
    omega = [[draw(omegas) for _ in range(n)] for n in sizes]
    cost = [[[draw(costs) for _ in range(n)] for n in sizes] for _ in range(k)]
    limits = []
    for per_layer in cost:
        low = sum(min(v) for v in per_layer)
        high = sum(max(v) for v in per_layer)
        limits.append(draw(st.floats(low - 5, high + 5)))
    return omega, cost, limits


@settings(max_examples=100, deadline=None, derandomize=True)
@given(problems())
def test_the_ilp_finds_the_brute_force_optimum(problem):
    omega, cost, limits = problem
    scales = [max(1.0, max(abs(v) for row in per for v in row)) for per in cost]
    best = brute_force(omega, cost, limits, scales)
    if best is None:
        with pytest.raises(InfeasibleBudget):
            solve_ilp(omega, cost, limits, scales=scales)
        return
    found = solve_ilp(omega, cost, limits, scales=scales)
    for per_layer, limit, scale in zip(cost, limits, scales):
        assert total(per_layer, found.choice) <= limit + BUDGET_SLACK * scale
    top = max(max(o) for o in omega)
    assert found.omega == pytest.approx(total(omega, found.choice))
    assert found.omega <= best[1] + 1e-9 * (top + best[1])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(problems(budgets=1), st.floats(0.0, 1.0))
def test_a_tighter_budget_never_gives_a_higher_cost(problem, shrink):
    omega, cost, limits = problem
    tight = limits[0] - shrink * 20
    try:
        loose_choice = solve_ilp(omega, cost, limits).choice
    except InfeasibleBudget:
        return
    try:
        tight_found = solve_ilp(omega, cost, [tight])
    except InfeasibleBudget:
        assert brute_force(omega, cost, [tight], [1.0]) is None
        return
    assert total(cost[0], tight_found.choice) <= total(cost[0], loose_choice) + 1e-9
    assert tight_found.omega >= total(omega, loose_choice) - 1e-9 * max(max(o) for o in omega)


def test_a_cost_the_sums_underestimate_is_cut_until_it_fits():
    # The real cost is (Σ c)² / 10: the linear model (Σ c) underestimates it above 10,
    # so the first solutions break the budget; each is cut off, and what remains is
    # the brute-force optimum of the real cost.
    omega = [[5.0, 2.0, 0.0], [4.0, 1.0, 0.0], [6.0, 3.0, 0.0]]
    cost = [[[1.0, 3.0, 6.0], [1.0, 3.0, 6.0], [1.0, 3.0, 6.0]]]
    limit = 30.0

    def real(choice):
        return total(cost[0], choice) ** 2 / 10

    found = solve_ilp(omega, cost, [limit], fits=lambda choice: real(choice) <= limit)
    feasible = [c for c in itertools.product(range(3), repeat=3) if real(c) <= limit]
    best = min(total(omega, c) for c in feasible)
    assert found.cuts > 0 and real(found.choice) <= limit
    assert found.omega == pytest.approx(best)


def test_an_infeasible_problem_says_so():
    with pytest.raises(InfeasibleBudget, match="no solution"):
        solve_ilp([[1.0, 0.0], [1.0, 0.0]], [[[2.0, 3.0], [2.0, 3.0]]], [3.0])


# -- widths and budgets on real models, objectives and backends ---------------------------

def _omega(seed: int):
    """Random sensitivities, falling with the width as real ones do."""
    g = torch.Generator().manual_seed(seed)
    scale = {g_: float(torch.rand((), generator=g)) * 10 ** float(torch.randint(-4, 1, (), generator=g))
             for g_ in PROFILE.group_shapes()}
    return lambda group, bits: scale[group] * 4.0 ** -bits


def _cost(backend):
    def cost(name, assignment):
        return HOST.objectives.get(name).for_backend(backend, None).evaluate(
            PROFILE, backend.legalise(assignment), backend)
    return cost


def _budget(name, fraction, backend):
    objective = HOST.objectives.get(name).for_backend(backend, None)
    reference = objective.evaluate(PROFILE, backend.legalise(PrecisionAssignment.uniform(PROFILE, 8, 8)),
                                   backend)
    return Budget(name, fraction * reference, reference, fraction, objective.unit)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1),
       backend=st.sampled_from(["generic", "gpu", "bitfusion", "loom", "cpu-int8"]),
       fractions=st.tuples(st.floats(0.2, 1.0), st.floats(0.3, 1.0), st.floats(0.3, 1.0)),
       fixed_inputs=st.booleans())
def test_every_budget_holds_with_only_the_backends_widths(seed, backend, fractions, fixed_inputs):
    back = HOST.backends.get(backend)
    weights = legal_widths(back.supported("weight"), 2, 8, "weight")
    inputs = [8] if fixed_inputs else legal_widths(back.supported("input"), 2, 8, "input")
    options = [[(w, a) for w in weights for a in inputs] for _ in PROFILE]
    budgets = [_budget("bitops", fractions[0], back), _budget("size", fractions[1], back),
               _budget("memory", fractions[2], back)]
    try:
        plan = plan_widths(PROFILE, _omega(seed), options, budgets, _cost(back))
    except InfeasibleBudget as exc:
        # Only when the narrowest widths already break a budget (every cost here grows with
        # the widths), or when memory's over-estimate leaves nothing.
        narrowest = PrecisionAssignment.uniform(PROFILE, weights[0], inputs[0])
        assert "cannot be met" in str(exc) or "at once" in str(exc)
        if "cannot be met" in str(exc):
            assert any(_cost(back)(b.objective, narrowest) > b.limit for b in budgets)
        return
    assert back.is_legal(plan.assignment)
    for group in plan.assignment:
        allowed = weights if group.endswith(":weight") else inputs
        assert plan.assignment[group] in allowed, group
    for b, real, predicted in zip(budgets, plan.costs, plan.predicted):
        assert real == pytest.approx(_cost(back)(b.objective, plan.assignment), rel=1e-12)
        assert real <= b.limit + BUDGET_SLACK * b.reference, b
        if b.objective != "memory" or fixed_inputs:  # additive: the model is the real cost
            assert predicted == pytest.approx(real, rel=1e-9), b
        else:  # a maximum over layers: the sums from the narrowest never under-estimate it
            assert predicted >= real * (1 - 1e-12), b


def test_the_ilp_equals_brute_force_on_lenet5():
    # LeNet-5's weights at 2-8 bits, inputs at 8: 7^4 = 2,401 assignments, each costed
    # for real; the ILP must find the least-Ω one within a BitOPs budget.
    omega = _omega(11)
    options = [[(w, 8) for w in range(2, 9)] for _ in PROFILE]
    back = HOST.backends.get("generic")
    budget = _budget("bitops", 0.55, back)
    plan = plan_widths(PROFILE, omega, options, [budget], _cost(back))
    best, best_omega = None, np.inf
    for widths in itertools.product(range(2, 9), repeat=len(PROFILE)):
        a = PrecisionAssignment.uniform(PROFILE, 8, 8).replace(
            {layer.weight_group: w for layer, w in zip(PROFILE, widths)})
        if BITOPS.evaluate(PROFILE, a) <= budget.limit * (1 + BUDGET_SLACK):
            value = sum(omega(layer.weight_group, w) + omega(layer.input_group, 8)
                        for layer, w in zip(PROFILE, widths))
            if value < best_omega:
                best, best_omega = widths, value
    assert best is not None
    assert plan.solution.omega == pytest.approx(best_omega, rel=1e-9)
    assert [plan.assignment[layer.weight_group] for layer in PROFILE] == list(best)


# -- trials ---------------------------------------------------------------------------

def _spec(**training):
    from mpsearch.testing.strategies_suite import base_spec

    raw = base_spec("hawq")
    raw["training"].update(training)
    return raw


def test_an_impossible_budget_fails_the_trial_at_once_in_one_line():
    # 2 bits everywhere costs 1/16 of 8 bits everywhere: 1 % cannot be met.
    outcome = run_trial(parse_spec(_spec()), 0, "hawq", {**PARAMS, "budget": 0.01})
    reason = outcome.attrs[ATTR_FAIL]
    assert outcome.failed and "\n" not in reason
    for words in ("strategy 'hawq'", "bitops <=", "0.01 of the 8-bit cost", "cannot be met",
                  "2-bit weights, 2-bit inputs", f"{lenet_bitops(2, 2):.6g} GBitOPs", "raise the budget"):
        assert words in reason, reason
    assert "hessian_seconds" not in outcome.attrs  # it failed before estimating the Hessian


def test_fixed_inputs_search_the_weights_only_post_training_on_the_gpu():
    raw = _spec(epochs=0)
    raw["backend"] = {"name": "gpu"}
    outcome = run_trial(parse_spec(raw), 0, "hawq",
                        {**QUICK, "budget": 0.75, "act_bits": 5, "budgets": "size=0.6"})
    assert not outcome.failed, outcome.attrs.get(ATTR_FAIL)
    attrs = outcome.attrs
    assert attrs["weight_widths"] == [4, 8] and attrs["input_widths"] == [8]  # 5 legalised to 8
    assert attrs["activations"] == "fixed" and attrs["epochs_trained"] == 0
    table = SensitivityTable.from_dict(attrs["sensitivity"])
    assert all(r.input_trace is None for r in table.layers)
    assert [b["objective"] for b in attrs["budgets"]] == ["bitops", "size"]
    for b in attrs["budgets"]:
        assert b["cost"] <= b["limit"] * (1 + BUDGET_SLACK)
    assert outcome.values["bitops"] == pytest.approx(attrs["budgets"][0]["cost"], rel=1e-12)
    assert outcome.values["size"] == pytest.approx(attrs["budgets"][1]["cost"], rel=1e-12)


def test_an_absolute_budget_is_in_the_objectives_unit():
    limit = lenet_bitops(4, 4)
    outcome = run_trial(parse_spec(_spec(epochs=0)), 0, "hawq",
                        {**QUICK, "budget": limit, "absolute": True, "budget_objective": "bitops"})
    assert not outcome.failed, outcome.attrs.get(ATTR_FAIL)
    assert outcome.attrs["budget"] == limit and outcome.attrs["budget_fraction"] is None
    assert outcome.values["bitops"] <= limit * (1 + BUDGET_SLACK)


# -- the parameters ---------------------------------------------------------------------

def test_budget_lists_parse():
    assert parse_budgets("size=0.5, latency@stripes=0.4") == [("size", 0.5), ("latency@stripes", 0.4)]
    assert parse_budgets("") == []
    for bad, words in (("size", "OBJECTIVE=BUDGET"), ("size=-1", "positive"), ("size=x", "positive"),
                       ("size=0.5,size=0.4", "two budgets")):
        with pytest.raises(MpsearchError, match=words):
            parse_budgets(bad)


@pytest.mark.parametrize("space, message", [
    ({"budget": Param(value=0)}, "positive number"),
    ({"min_bits": Param(value=6), "max_bits": Param(choices=(4, 8))}, "min_bits can exceed max_bits"),
    ({"act_bits": Param(value=33)}, "integer 0-32"),
    ({"max_iterations": Param(value=0)}, "at least 1"),
    ({"tolerance": Param(value=-0.1)}, "at least 0"),
    ({"absolute": Param(value="yes")}, "true or false"),
    ({"budgets": Param(value="size:0.5")}, "OBJECTIVE=BUDGET"),
    ({"quantizer": Param(value="lsq")}, "not a quantizer family"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        HawqStrategy.check_space(space, "spec: strategy[0].space")


def test_no_legal_width_in_range_is_named():
    assert legal_widths(None, 3, 5, "weight") == [3, 4, 5]
    assert legal_widths((2, 4, 8, 16), 3, 8, "weight") == [4, 8]
    with pytest.raises(MpsearchError, match="accepts no input width in 2-6 .it accepts 8, 32."):
        legal_widths((8, 32), 2, 6, "input")


# -- the study's record and its plot ------------------------------------------------------

@pytest.mark.slow
def test_study_plot_draws_a_hawq_trials_sensitivities(tmp_path, monkeypatch):
    import matplotlib.image
    from click.testing import CliRunner

    from mpsearch.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(
        '[study]\nname = "h"\nobjectives = ["accuracy", "bitops"]\nn_trials = 1\n'
        '[model]\nname = "lenet5"\n[data]\nname = "mnist-mini"\ntrain_subset = 500\n'
        '[training]\nepochs = 0\nbatch_size = 64\ndevice = "cpu"\n'
        '[[strategy]]\nname = "hawq"\nspace.budget = 0.3\nspace.hessian_images = 64\n'
        'space.max_iterations = 2\n[resources]\nexecutor = "local"\n')
    runner = CliRunner()
    created = runner.invoke(cli, ["study", "create", "s.toml", "--quiet"], catch_exceptions=False)
    assert created.exit_code == 0, created.output
    result = runner.invoke(cli, ["study", "plot", "h", "--trial", "0", "-o", "figs"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "figs/h-trial0-sensitivity.png" in result.output
    image = matplotlib.image.imread(tmp_path / "figs" / "h-trial0-sensitivity.png")
    assert image.shape[1] > 2 * image.shape[0]  # two panels side by side: weights and inputs
    assert (tmp_path / "figs" / "h-trial0-bits.png").is_file()


def test_one_objective_gets_one_budget():
    outcome = run_trial(parse_spec(_spec(epochs=0)), 0, "hawq",
                        {**QUICK, "budget": 0.3, "budgets": "bitops=0.5"})
    assert outcome.failed and "'bitops' has a budget in both budget and budgets" in outcome.attrs[ATTR_FAIL]
