"""The ``hawq`` strategy: Hessian sensitivity per layer, widths from an integer linear program."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from mpsearch.api import (MAX_BITS, QUANTIZER_FAMILIES, MpsearchError, Param, PrecisionAssignment,
                          SearchResult, SpecError, Strategy, check_integer_params, hookimpl,
                          layer_sensitivity, quantize_at)

REFERENCE_BITS = 8  # a fractional budget is a share of the all-8-bit assignment's cost
BUDGET_SLACK = 1e-9  # relative to the reference: a cost equal to the budget up to rounding fits
MAX_CUTS = 20  # re-solves after a solution whose real cost broke a budget (non-additive cost)
HESSIAN_SEED_OFFSET = 4_421  # Hutchinson's draws: the trial's seed plus this, so data order is untouched
_BUDGET_ENTRY = re.compile(r"^\s*([^=\s]+)\s*=\s*([^\s]+)\s*$")


class InfeasibleBudget(MpsearchError):
    """No assignment within the allowed widths meets every budget."""


@dataclass(frozen=True)
class Budget:
    """One budget of the ILP: a cost objective's value may not exceed ``limit``.

    Attributes:
        objective: the objective's name.
        limit: in the objective's unit.
        reference: the cost of the all-8-bit assignment (legalised), the unit of fractions.
        fraction: ``limit / reference`` as given (None when the budget was absolute).
        unit: the objective's unit, for messages.
    """

    objective: str
    limit: float
    reference: float
    fraction: float | None
    unit: str

    def describe(self) -> str:
        share = f" ({self.fraction:g} of the {REFERENCE_BITS}-bit cost)" if self.fraction is not None else ""
        return f"{self.objective} <= {self.limit:.6g} {self.unit}{share}"


@dataclass
class IlpSolution:
    """The ILP's answer: one option per layer.

    Attributes:
        choice: per layer, the index of its chosen option.
        omega: Σ Ω of the choice.
        solves: MILPs solved (the least-Ω solve, the tie-break, and again after each cut).
        cuts: solutions excluded because their real cost broke a budget.
    """

    choice: list[int]
    omega: float
    solves: int
    cuts: int


def solve_ilp(omega: Sequence[Sequence[float]], costs: Sequence[Sequence[Sequence[float]]],
              limits: Sequence[float], *, scales: Sequence[float] | None = None,
              fits: Callable[[list[int]], bool] | None = None, max_cuts: int = MAX_CUTS,
              tie_break: bool = True) -> IlpSolution:
    """Choose one option per layer minimising Σ Ω subject to ``Σ costs[k] <= limits[k]`` for every k.

    A MILP in one-hot variables ``x[l, c]`` (one per layer and option, ``Σ_c x[l, c] = 1``),
    solved by HiGHS through :func:`scipy.optimize.milp` to a zero relative gap.
    Among the choices of least Ω (to 1e-12 of the largest Ω), a second solve takes
    the one cheapest on the first budget, so that a budget never buys nothing: a
    tighter budget then never gives a higher cost.

    A cost additive over layers is exact in this form. ``fits`` checks a solution's
    real costs (for a cost that is not additive); a solution it rejects is cut off
    (``Σ_l x[l, choice_l] <= L - 1``) and the MILP solved again, at most
    ``max_cuts`` times.

    Args:
        omega: per layer, Ω of each of its options.
        costs: per budget, per layer, the cost of each option (the model's cost
            is the sum over layers).
        limits: per budget, the most the sum may be.
        scales: per budget, the magnitude of its costs (the reference cost);
            ``limits`` are met to :data:`BUDGET_SLACK` of it.

    Raises:
        InfeasibleBudget: no choice meets every limit (or every one ``fits`` rejected).
    """
    problem = IlpProblem.build(omega, costs, limits, scales)
    for _ in range(max_cuts + 1):
        x = problem.solve(problem.c, [])
        if x is None:
            raise InfeasibleBudget("the ILP has no solution")
        choice = problem.choice_of(x)
        if tie_break and problem.rows:
            least = float(sum(problem.c[s + j] for s, j in zip(problem.starts, choice)))
            again = problem.solve(problem.rows[0], [(problem.c, least + 1e-6 + 1e-12 * least)])
            if again is not None:
                choice = problem.choice_of(again)
        if problem.meets_limits(choice) and (fits is None or fits(choice)):
            picked = problem.picked(choice)
            return IlpSolution(choice, float(problem.flat_omega[picked].sum()), problem.solves,
                               len(problem.cuts))
        cut = np.zeros(problem.n)
        cut[problem.picked(choice)] = 1.0
        problem.cuts.append(cut)
    raise InfeasibleBudget(f"the ILP's solutions broke a budget {max_cuts + 1} times when their real "
                           f"cost was measured (an objective far from additive over layers)")


@dataclass
class IlpProblem:
    """:func:`solve_ilp`'s MILP in one-hot variables: Ω normalised, the budgets' rows scaled,
    and the cuts added so far; :meth:`solve` runs HiGHS on it."""

    sizes: list[int]
    starts: np.ndarray
    flat_omega: np.ndarray
    c: np.ndarray  # Ω, normalised: what the MILP minimises
    rows: list[np.ndarray]  # per budget, its costs over its scale
    uppers: list[float]
    cost_rows: list[np.ndarray]  # per budget, its costs as given
    limits: list[float]
    scales: list[float]
    one_hot: np.ndarray
    cuts: list[np.ndarray] = field(default_factory=list)
    solves: int = 0

    @property
    def n(self) -> int:
        return int(sum(self.sizes))

    @classmethod
    def build(cls, omega: Sequence[Sequence[float]], costs: Sequence[Sequence[Sequence[float]]],
              limits: Sequence[float], scales: Sequence[float] | None) -> IlpProblem:
        """The problem, checked: an option for every layer, and finite sensitivities.

        Raises:
            MpsearchError: a layer without options, or a sensitivity that is not finite.
        """
        sizes = [len(o) for o in omega]
        if not sizes or min(sizes) < 1:
            raise MpsearchError("the ILP needs at least one option for every layer.")
        n, layers = sum(sizes), len(sizes)
        starts = np.cumsum([0, *sizes])[:-1]
        flat_omega = np.concatenate([np.asarray(o, dtype=np.float64) for o in omega])
        if not np.all(np.isfinite(flat_omega)):
            raise MpsearchError("the sensitivities given to the ILP are not all finite.")
        # Ω shifted to 0 at each layer's least option (one option per layer: the argmin is
        # unchanged) and scaled to at most 1e6, so that HiGHS's absolute gap (1e-6) is
        # negligible against every difference that matters.
        shifted = np.concatenate([np.asarray(o, dtype=np.float64) - np.min(o) for o in omega])
        top = float(shifted.max())
        c = shifted * (1e6 / top) if top > 0 else shifted
        scales = list(scales) if scales is not None else [1.0] * len(limits)
        rows, uppers, cost_rows = [], [], []
        for k, (per_layer, limit) in enumerate(zip(costs, limits)):
            scale = abs(float(scales[k])) or 1.0
            row = np.concatenate([np.asarray(v, dtype=np.float64) for v in per_layer]) / scale
            cost_rows.append(row * scale)
            rows.append(row)
            uppers.append(float(limit) / scale + BUDGET_SLACK)
        one_hot = np.zeros((layers, n))
        for l, (s, size) in enumerate(zip(starts, sizes)):
            one_hot[l, s:s + size] = 1.0
        return cls(sizes, starts, flat_omega, c, rows, uppers, cost_rows, list(limits), scales, one_hot)

    def solve(self, objective: np.ndarray, extra: list[tuple[np.ndarray, float]]) -> np.ndarray | None:
        """HiGHS's solution minimising ``objective`` (with ``extra`` rows ``row @ x <= upper``),
        or None where there is none.

        Raises:
            MpsearchError: the solver stopped without a solution for another reason.
        """
        from scipy.optimize import Bounds, LinearConstraint, milp

        self.solves += 1
        layers = len(self.sizes)
        constraints = [LinearConstraint(self.one_hot, 1.0, 1.0)]
        if self.rows:
            constraints.append(LinearConstraint(np.vstack(self.rows), -np.inf, np.asarray(self.uppers)))
        for row, upper in extra:
            constraints.append(LinearConstraint(row[None, :], -np.inf, upper))
        for cut in self.cuts:
            constraints.append(LinearConstraint(cut[None, :], -np.inf, layers - 1))
        result = milp(objective, constraints=constraints, integrality=np.ones(self.n),
                      bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
        if result.status == 2:  # infeasible
            return None
        if result.x is None:
            raise MpsearchError(f"the ILP solver stopped without a solution: {result.message}")
        return result.x

    def choice_of(self, x: np.ndarray) -> list[int]:
        """Each layer's option in the one-hot solution ``x``."""
        return [int(np.argmax(x[s:s + size])) for s, size in zip(self.starts, self.sizes)]

    def picked(self, choice: list[int]) -> list[int]:
        """The one-hot variables that ``choice`` sets."""
        return [s + j for s, j in zip(self.starts, choice)]

    def meets_limits(self, choice: list[int]) -> bool:
        """Whether ``choice``'s costs, as given, meet every limit to the slack of its scale."""
        picked = np.array(self.picked(choice))
        return all(float(row[picked].sum()) <= float(limit) + BUDGET_SLACK * (abs(float(scale)) or 1.0)
                   for row, limit, scale in zip(self.cost_rows, self.limits, self.scales))


@dataclass
class Plan:
    """The widths :func:`plan_widths` chose, with their real and their linear-model costs per budget."""

    assignment: PrecisionAssignment
    solution: IlpSolution
    costs: list[float]
    predicted: list[float]


def assignment_of(profile, options: Sequence[Sequence[tuple[int, int]]], choice: Sequence[int],
                  scale_bits: int) -> PrecisionAssignment:
    """The assignment giving each layer its chosen ``(weight, input)`` option."""
    bits: dict[str, int] = {}
    for layer, opts, j in zip(profile, options, choice):
        bits[layer.weight_group], bits[layer.input_group] = opts[j]
    return PrecisionAssignment(bits, profile.group_shapes(), {l.weight_group: scale_bits for l in profile})


def check_floor(budget: Budget, floor: float, weight_bits: int, input_bits: int) -> None:
    """Raise :class:`InfeasibleBudget` when the narrowest assignment's cost ``floor`` exceeds the budget."""
    if floor > budget.limit + BUDGET_SLACK * budget.reference:
        raise InfeasibleBudget(f"the budget {budget.describe()} cannot be met: the narrowest widths "
                               f"({weight_bits}-bit weights, {input_bits}-bit inputs) cost "
                               f"{floor:.6g} {budget.unit}; raise the budget or lower min_bits.")


def plan_widths(profile, omega: Callable[[str, int], float], options: Sequence[Sequence[tuple[int, int]]],
                budgets: Sequence[Budget], cost: Callable[[str, PrecisionAssignment], float],
                scale_bits: int = 32) -> Plan:
    """The assignment of least Σ Ω whose real costs meet every budget (HAWQ-v3's ILP).

    Args:
        omega: Ω of a group (``"conv1:weight"``) at a width.
        options: per layer, its ``(weight, input)`` width pairs, the narrowest first.
        cost: an objective's (legalised) cost of an assignment, by name.
        scale_bits: each weight group's quantizer storage, as the model will have it.

    Raises:
        InfeasibleBudget: no assignment of the options meets every budget.
    """
    layers = list(profile)
    narrowest = assignment_of(profile, options, [0] * len(layers), scale_bits)
    floors = [cost(b.objective, narrowest) for b in budgets]
    for b, floor in zip(budgets, floors):
        check_floor(b, floor, *options[0][0])
    omegas = [[omega(layer.weight_group, w) + omega(layer.input_group, a) for w, a in opts]
              for layer, opts in zip(layers, options)]
    # Each option's cost: the change when that one layer leaves the narrowest option.
    # Exact for a cost additive over layers; for a maximum over layers, an over-estimate.
    deltas = [[[cost(b.objective, narrowest.replace({layer.weight_group: w, layer.input_group: a})) - floor
                for w, a in opts] for layer, opts in zip(layers, options)]
              for b, floor in zip(budgets, floors)]
    real: dict[tuple[int, ...], list[float]] = {}

    def fits(choice: list[int]) -> bool:
        costs = [cost(b.objective, assignment_of(profile, options, choice, scale_bits)) for b in budgets]
        real[tuple(choice)] = costs
        return all(v <= b.limit + BUDGET_SLACK * b.reference for v, b in zip(costs, budgets))

    try:
        solution = solve_ilp(omegas, deltas, [b.limit - floor for b, floor in zip(budgets, floors)],
                             scales=[b.reference for b in budgets], fits=fits)
    except InfeasibleBudget as exc:
        raise InfeasibleBudget(f"no assignment of the widths meets every budget at once "
                               f"({'; '.join(b.describe() for b in budgets)}): {exc}; raise a budget "
                               f"or lower min_bits.") from None
    predicted = [floor + sum(d[l][j] for l, j in enumerate(solution.choice))
                 for floor, d in zip(floors, deltas)]
    return Plan(assignment_of(profile, options, solution.choice, scale_bits), solution,
                real[tuple(solution.choice)], predicted)


class HawqStrategy(Strategy):
    """HAWQ: per-layer Hessian sensitivity, and the widths of least total sensitivity under cost budgets.

    HAWQ-v2 (Z. Dong, Z. Yao, D. Arfeen, A. Gholami, M. W. Mahoney, K. Keutzer,
    "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
    NeurIPS 2020) measures how sensitive each layer is: the average Hessian trace
    of the loss with respect to its weights, by Hutchinson's method, times the
    squared perturbation quantization causes, Ω(b) = Tr(H)/n · ‖Q_b(W) − W‖²
    (:mod:`mpsearch.sensitivity`). HAWQ-v3 (Z. Yao, Z. Dong, Z. Zheng, A. Gholami,
    J. Yu, E. Tan, L. Wang, Q. Huang, Y. Wang, M. W. Mahoney, K. Keutzer,
    "HAWQ-V3: Dyadic Neural Network Quantization", ICML 2021) chooses each layer's
    width by an integer linear program: least Σ Ω under budgets on model size,
    BitOPs or latency. Here:

    1. From the trial's start (the study's float start) the traces of the weights'
       Hessian blocks and, with ``act_bits = 0``, of the input activations' are
       estimated on the first ``hessian_images`` of the training split (Rademacher
       vectors, double back-propagation), until every block's running mean changes
       by less than ``tolerance`` (relative) or after ``max_iterations`` passes.
       Ω is tabulated for every width in ``min_bits``-``max_bits`` that the study's
       backend accepts, with the very quantizers the family deploys (PACT's clip
       calibrated at each width, as the host's calibration sets it).
    2. Each layer's options are its (weight, input) width pairs; Ω of an option is
       the sum of its weights' and its inputs' Ω. The ILP (:func:`solve_ilp`, HiGHS)
       picks one option per layer. A budget's cost per option is the objective's
       change when that one layer moves from the narrowest option; a cost
       additive over layers (BitOPs, size, footprint, and latency and energy on
       every built-in backend, whose models are sums over layers) is then exact.
       A cost that is not (``memory``: the largest activation, a maximum over
       layers) is over-estimated by these sums when activation widths are
       searched, so the solution fits but may not be the least-Ω one that does;
       with fixed activation widths that maximum is a constant and exact again.
       Every solution's real cost (legalised, by the objective itself) is checked
       against every budget; one that breaks a budget is cut off and the ILP
       solved again. An infeasible budget fails the trial, saying what the
       narrowest widths would cost.
    3. The model is quantized at the widths (ranges calibrated) and handed to the
       shared fine-tuning for the whole of the trial's ``epochs``: the search
       trains nothing. With ``epochs = 0`` it is post-training HAWQ.

    The trial records the sensitivity table (``sensitivity``), the budgets and
    their real costs, and the search's seconds (``hessian_seconds``,
    ``ilp_seconds``, ``search_seconds``).

    Parameters (defaults):
        budget: range 0.1-0.6; the budget on ``budget_objective`` as a fraction of
            the all-8-bit assignment's (legalised) cost, or in the objective's
            unit with ``absolute``.
        budget_objective: fixed ``""``, the study's first cost objective; or any
            registered cost objective (choices let Optuna choose which constrains).
        budgets: fixed ``""``; more budgets, ``"size=0.5, latency@stripes=0.4"``,
            each read like ``budget``.
        absolute: fixed false.
        act_bits: fixed 0: input widths are searched, with the activations'
            Hessian (HAWQ-v2); a width fixes every layer's inputs there
            (legalised) and only the weights are searched (HAWQ-v3's ILP).
        min_bits, max_bits: fixed 2 and 8; the widths considered.
        hessian_images: fixed 0, meaning ``[training] calibration_images``.
        tolerance, max_iterations: fixed 0.01 and 20; Hutchinson's stopping rule.
        quantizer: fixed ``"dorefa-pact"``, or ``"minmax"``.

    HAWQ-v3's published figures (ResNet-18 on ImageNet, the authors' model zoo
    at github.com/Zhen-Dong/HAWQ; each layer's weights and activations at 4 or
    8 bits, BitOPs budgets): 71.47 % top-1 in float, 71.56 % at W8A8 (116
    GBOPs), 70.40 / 70.22 / 68.72 % at 92 / 72 / 54 GBOPs (mixed 4/8), 68.45 %
    at W4A4 (34 GBOPs).
    Reproducing them with mpsearch needs: ``[model] name = "torchvision:resnet18"``
    with ImageNet-trained weights as ``[model] weights``; ImageNet through
    ``[data] name = "imagefolder"``; ``[backend] name = "gpu"`` (4, 8 and 16
    bits) with ``min_bits = 4`` and ``max_bits = 8``; a ``bitops`` budget of
    HAWQ-v3's "bops0.5", halfway between the 4- and the 8-bit cost, which is
    ``budget = 0.625`` here (more precisely, computed from the two uniform
    assignments' costs with ``mpsearch cost``); and tens of epochs of
    fine-tuning. Expect a gap: HAWQ-v3 folds batch normalisation into the
    convolutions, quantizes weights per channel with a symmetric range, pins the
    first and last layers at 8 bits, and ties each residual block's shortcut
    width to its main path; mpsearch does none of these.

    Deviations: each layer's inputs get a width of their own (HAWQ-v3 gives a
    layer's weights and inputs one width); the Hessian is of the mean loss over
    ``hessian_images`` with fresh Rademacher vectors for every batch (PyHessian
    keeps one vector over the whole data set), which gives an unbiased estimate
    of the same trace with less variance per pass; the first and last layers are
    searched like the others.
    """

    label = "hawq"
    description = "HAWQ-v2/v3: Hessian-trace sensitivity per layer and an ILP (HiGHS) under cost budgets"
    resumable = True
    post_training = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "budget": Param(low=0.1, high=0.6),
        "budget_objective": Param(value=""),
        "budgets": Param(value=""),
        "absolute": Param(value=False),
        "act_bits": Param(value=0),
        "min_bits": Param(value=2),
        "max_bits": Param(value=8),
        "hessian_images": Param(value=0),
        "tolerance": Param(value=0.01),
        "max_iterations": Param(value=20),
        "quantizer": Param(value="dorefa-pact"),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, non-positive budgets, bad widths, counts, tolerances and budget lists."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        rules: dict[str, tuple[Callable[[Any], bool], str]] = {
            "budget": (lambda v: _number(v) and v > 0, "a positive number"),
            "tolerance": (lambda v: _number(v) and v >= 0, "a number of at least 0"),
            "absolute": (lambda v: isinstance(v, bool), "true or false"),
            "budget_objective": (lambda v: isinstance(v, str),
                                 "an objective's name, or \"\" for the study's first cost objective"),
        }
        for name, (ok, rule) in rules.items():
            for v in merged[name].values():
                if not ok(v):
                    raise SpecError(f"{where}.{name}: {v!r} must be {rule}.")
        check_integer_params(merged, where, (("act_bits", 0, MAX_BITS), ("min_bits", 1, MAX_BITS),
                                             ("max_bits", 1, MAX_BITS), ("hessian_images", 0, None),
                                             ("max_iterations", 1, None)))
        for v in merged["budgets"].values():
            try:
                parse_budgets(v)
            except MpsearchError as exc:
                raise SpecError(f"{where}.budgets: {exc}") from None
        for v in merged["quantizer"].values():
            if v not in QUANTIZER_FAMILIES:
                raise SpecError(f"{where}.quantizer: {v!r} is not a quantizer family; use one "
                                f"of {', '.join(QUANTIZER_FAMILIES)}.")

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Estimate Ω, solve the ILP under the budgets; every epoch of the trial is left to fine-tuning."""
        p = self.resolve(params)
        self.check_space({n: Param(value=v) for n, v in p.items()}, "strategy 'hawq' parameters")
        started = time.perf_counter()
        profile = context.profile
        budgets = self._budgets(context, p)
        weight_widths = legal_widths(context.backend.supported("weight"), p["min_bits"], p["max_bits"],
                                     "weight")
        searched = int(p["act_bits"]) == 0
        if searched:
            input_widths = legal_widths(context.backend.supported("input"), p["min_bits"],
                                        p["max_bits"], "input")
        else:
            fixed = context.legalise(PrecisionAssignment.uniform(profile, weight_widths[-1],
                                                                 int(p["act_bits"])))
            input_widths = sorted({int(fixed[layer.input_group]) for layer in profile})
        options = [[(w, a) for w in weight_widths for a in input_widths] for _ in profile]
        scale_bits = _scale_bits(p["quantizer"])

        def cost(name: str, assignment: PrecisionAssignment) -> float:
            return context.objective(name).evaluate(profile, context.legalise(assignment), context.backend)

        # A budget the narrowest widths exceed fails at once, before the Hessian's cost.
        narrowest = assignment_of(profile, options, [0] * len(profile), scale_bits)
        try:
            for b in budgets:
                check_floor(b, cost(b.objective, narrowest), weight_widths[0], input_widths[0])
        except InfeasibleBudget as exc:
            raise InfeasibleBudget(f"strategy 'hawq': {exc}") from None

        images = int(p["hessian_images"]) or context.training.calibration_images
        batches = calibration_batches(context.train, images, context.training.batch_size)
        table = layer_sensitivity(context.model, profile, batches, weight_widths,
                                  input_widths=input_widths if searched else (),
                                  quantizer=p["quantizer"], tolerance=float(p["tolerance"]),
                                  max_iterations=int(p["max_iterations"]),
                                  generator=torch.Generator().manual_seed(context.seed + HESSIAN_SEED_OFFSET))
        hessian_seconds = time.perf_counter() - started

        tick = time.perf_counter()

        def omega(group: str, bits: int) -> float:
            return table.omega(group, bits) if searched or group.endswith(":weight") else 0.0

        try:
            plan = plan_widths(profile, omega, options, budgets, cost, scale_bits)
        except InfeasibleBudget as exc:
            raise InfeasibleBudget(f"strategy 'hawq': {exc}") from None
        ilp_seconds = time.perf_counter() - tick

        model = quantize_at(context.model, profile, context.legalise(plan.assignment), p["quantizer"])
        context.calibrate(model)
        attrs = {
            "budget": budgets[0].limit, "budget_fraction": budgets[0].fraction,
            "budget_objective": budgets[0].objective, "budget_unit": budgets[0].unit,
            "reference_cost": budgets[0].reference,
            "budgets": [{"objective": b.objective, "limit": b.limit, "fraction": b.fraction,
                         "unit": b.unit, "reference": b.reference, "cost": real, "predicted": predicted}
                        for b, real, predicted in zip(budgets, plan.costs, plan.predicted)],
            "omega": plan.solution.omega, "ilp_solves": plan.solution.solves,
            "ilp_cuts": plan.solution.cuts,
            "weight_widths": weight_widths, "input_widths": input_widths,
            "activations": "hessian" if searched else "fixed",
            "hessian_images": table.images, "hessian_iterations": table.iterations,
            "hessian_converged": table.converged,
            "hessian_seconds": hessian_seconds, "ilp_seconds": ilp_seconds,
            "search_seconds": time.perf_counter() - started,
            "sensitivity": table.to_dict(),
        }
        return SearchResult(model, plan.assignment, float(context.epochs), attrs)

    def _budgets(self, context, p: Mapping[str, Any]) -> list[Budget]:
        if not context.objectives and not p["budget_objective"]:
            raise MpsearchError("strategy 'hawq' needs a cost objective for its budget; add one to "
                                "[study] objectives or name one in budget_objective.")
        first = p["budget_objective"] or next(iter(context.objectives))
        entries = [(first, float(p["budget"])), *parse_budgets(p["budgets"])]
        if first in dict(entries[1:]):
            raise MpsearchError(f"strategy 'hawq': objective {first!r} has a budget in both budget and "
                                f"budgets; give it one.")
        reference_assignment = context.legalise(
            PrecisionAssignment.uniform(context.profile, REFERENCE_BITS, REFERENCE_BITS,
                                        scale_bits=_scale_bits(p["quantizer"])))
        out = []
        for name, value in entries:
            objective = context.objective(name)  # an unknown name: one line with the close matches
            if objective.direction != "minimize":
                raise MpsearchError(f"strategy 'hawq': the budget's objective {name!r} is maximised; a "
                                    f"budget bounds a cost that is minimised (e.g. bitops, size).")
            reference = objective.evaluate(context.profile, reference_assignment, context.backend)
            absolute = bool(p["absolute"])
            out.append(Budget(name, value if absolute else value * reference, reference,
                              None if absolute else value, objective.unit))
        return out


def parse_budgets(text: str) -> list[tuple[str, float]]:
    """``"size=0.5, latency@stripes=0.4"`` -> ``[("size", 0.5), ("latency@stripes", 0.4)]``.

    Raises:
        MpsearchError: an entry is not ``NAME=POSITIVE_NUMBER``, or a name repeats.
    """
    out: list[tuple[str, float]] = []
    if not isinstance(text, str):
        raise MpsearchError(f"{text!r} must be a string like \"size=0.5, latency@stripes=0.4\".")
    for entry in filter(str.strip, text.split(",")):
        match = _BUDGET_ENTRY.match(entry)
        value = None
        if match:
            try:
                value = float(match.group(2))
            except ValueError:
                value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise MpsearchError(f"{entry.strip()!r} is not OBJECTIVE=BUDGET with a positive budget, "
                                f"as in \"size=0.5, latency@stripes=0.4\".")
        if any(name == match.group(1) for name, _ in out):
            raise MpsearchError(f"objective {match.group(1)!r} has two budgets.")
        out.append((match.group(1), value))
    return out


def legal_widths(supported: Sequence[int] | None, min_bits: int, max_bits: int, kind: str) -> list[int]:
    """The widths in ``min_bits``-``max_bits`` a backend accepts for ``kind`` (None: any).

    Raises:
        MpsearchError: none is in range.
    """
    widths = (list(range(int(min_bits), int(max_bits) + 1)) if supported is None else
              sorted(int(b) for b in supported if int(min_bits) <= int(b) <= int(max_bits)))
    if not widths:
        raise MpsearchError(f"strategy 'hawq': the study's backend accepts no {kind} width in "
                            f"{min_bits}-{max_bits} (it accepts {', '.join(map(str, supported or []))}); "
                            f"widen min_bits-max_bits.")
    return widths


def calibration_batches(data, images: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` of ``data`` in batches (normalised, not augmented), as the host calibrates."""
    n = min(len(data), int(images))
    out = []
    for x, y in data.batches(batch_size):
        if sum(len(t) for _, t in out) >= n:
            break
        keep = n - sum(len(t) for _, t in out)
        out.append((x[:keep], y[:keep]))
    return out


def _scale_bits(family: str) -> int:
    """The storage the family's weight quantizer needs besides the weights (its scale_bits)."""
    from mpsearch.api import DoReFaQuantizer, FixedBits, MinMaxQuantizer

    cls = DoReFaQuantizer if family == "dorefa-pact" else MinMaxQuantizer
    return cls(FixedBits(8)).scale_bits()


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@hookimpl
def register_strategies(register):
    register("hawq", HawqStrategy)
