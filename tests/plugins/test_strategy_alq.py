"""The ``alq`` strategy: conformance, and the maths of ALQ (Qu et al., CVPR 2020) that could go wrong."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from mpsearch.plugins.alq.strategy import (
    MIN_PRUNE_BATCHES,
    ALQStrategy,
    _ALQSteps,
    attach_alq,
    bits_schedule,
    calibrate_activations,
    plan_phases,
)

from mpsearch.assignment import PrecisionAssignment
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.quant import apply_assignment, assignment_from_model
from mpsearch.plugins.alq.quantizers import (
    ALQWeightQuantizer,
    AMSGradState,
    Grouping,
    MultiBitActivationQuantizer,
    choose_grouping,
    closed_form_alpha,
    flip_negative,
    prune_increment,
    quadratic_model,
    search_bases,
    select_for_pruning,
    sign_patterns,
    sketch,
    storage_bits,
)
from mpsearch.spec import Param, SpecError
from mpsearch.testing.strategies_suite import StrategyTestCase, TrialRun

optuna = pytest.importorskip("optuna")

# One epoch of 1,000 images is 16 steps, all ALQ's from the float start: sketch-retrain,
# prune once to the target, retrain and finish (the final phase is its fine-tuning).
FAST = {"rounds": 1, "prune_ratio": 0.3, "i_max": 6, "activation_bits": 0}
LENET_WEIGHTS = 430_500


def w_hat(bases: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return torch.einsum("gni,gi->gn", bases.to(alpha.dtype), alpha)


class TestALQConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "alq"

    @pytest.fixture
    def params(self):
        return {"target_bits": 2.0, **FAST}

    # No stronger/weaker pair: a lower target_bits costs less by construction (the bits
    # schedule meets it); what the pruning learns is tested below.

    @pytest.fixture
    def min_accuracy(self):
        return 0.8  # the float start has 0.887; measured 0.874 at 2 bits per weight

    def test_storage_attributes_are_eq26_and_match_the_size_objective(self, trial: TrialRun):
        attrs, values = trial.outcome.attrs, trial.outcome.values
        assert attrs["float_storage_kb"] == pytest.approx(LENET_WEIGHTS * 4 / 1000)  # 1,722 KB
        assert attrs["storage_kb"] == pytest.approx(values["size"] * 1000)  # size is in MB
        assert attrs["compression_ratio"] == pytest.approx(attrs["float_storage_kb"] / attrs["storage_kb"])
        assignment = trial.assignment()
        # Storage exceeds the bases alone by the coordinates and the width table.
        bases_kb = assignment.average_weight_bits() * LENET_WEIGHTS / 8 / 1000
        assert attrs["storage_kb"] > bases_kb

    def test_the_target_bit_width_is_reached_and_recorded(self, trial: TrialRun):
        attrs = trial.outcome.attrs
        assert attrs["sketch_weight_bits"] == pytest.approx(6.0)  # I_max bases everywhere at first
        # One pruning iteration overshoots the quota by less than one coordinate's group.
        assert 2.0 - 512 / LENET_WEIGHTS <= attrs["average_weight_bits"] <= 2.0
        layers = attrs["layer_bits"]
        assert set(layers) == {"conv1", "conv2", "fc1", "fc2"}
        assert all(0 < b <= 6 for b in layers.values())
        assert attrs["layer_structure"]["fc1"] == "subchannel(2) (n=400)"  # the paper's choice
        assert attrs["rounds"] == 1 and attrs["epochs_trained"] == pytest.approx(1.0)
        assert attrs["alq_steps"] == 16

    def test_widths_are_per_weight_and_constant_within_each_group(self, trial: TrialRun):
        assignment = trial.assignment()
        bits = assignment["fc1:weight"]
        assert tuple(bits.shape) == (500, 800)
        halves = bits.reshape(1000, 400)  # sub-channel-wise: two groups of 400 per row
        assert torch.equal(halves, halves[:, :1].expand(-1, 400))
        assert assignment["fc1:input"] == 32  # activation_bits 0: float inputs


@pytest.fixture(scope="module")
def lenet():
    host = PluginHost(entry_points=False)
    spec = host.models.get("lenet5")
    return spec.create(10, (1, 28, 28), seed=0), model_profile(spec, 10, (1, 28, 28))


# -- Alg. 1: structured sketching ---------------------------------------------------------------


def test_sketching_gives_independent_bases_an_orthogonal_residual_and_a_falling_error():
    torch.manual_seed(0)
    w = torch.randn(7, 40, dtype=torch.float64)
    errors = []
    for i in range(1, 7):
        bases, alpha, mask = sketch(w, i)
        assert mask.all() and (alpha >= 0).all()
        b = bases.to(torch.float64)
        residual = w - w_hat(b, alpha)
        # Theorem A.1: least squares leaves the residual orthogonal to span(B) ...
        assert torch.einsum("gni,gn->gi", b, residual).abs().max() < 1e-9
        # ... so the next sign(residual) is independent of the bases so far
        assert all(int(torch.linalg.matrix_rank(b[g])) == i for g in range(7))
        errors.append((residual**2).sum(1))
    for before, after in itertools.pairwise(errors):
        assert (after < before).all()


def test_sketching_stops_at_the_threshold_and_gives_an_all_zero_group_no_basis():
    torch.manual_seed(1)
    w = torch.randn(3, 64, dtype=torch.float64)
    w[2] = 0.0
    bases, alpha, mask = sketch(w, 8, sigma=0.05)
    widths = mask.sum(1)
    assert widths[2] == 0 and (alpha[2] == 0).all()
    for g in range(2):
        err = ((w[g] - w_hat(bases[g:g + 1], alpha[g:g + 1])[0]) ** 2).sum() / (w[g] ** 2).sum()
        assert err <= 0.05
        fewer = sketch(w[g:g + 1], int(widths[g]) - 1)
        err_fewer = ((w[g] - w_hat(*fewer[:2])[0]) ** 2).sum() / (w[g] ** 2).sum()
        assert err_fewer > 0.05  # one basis less would not have met it


# -- Step 2: bases (Eq. 19-20) and coordinates (Eq. 23) -----------------------------------------


def test_exhaustive_basis_search_is_the_argmin_of_eq19_per_row():
    torch.manual_seed(2)
    alpha = torch.rand(4, 3) * torch.tensor([[1.0, 1.0, 0.0]])  # the third slot inactive in all
    alpha[1, 2] = 0.3
    target = torch.randn(4, 50)
    bases = search_bases(alpha, target)
    assert set(bases.unique().tolist()) == {-1.0, 1.0}
    got = (w_hat(bases, alpha) - target).abs()
    every = (alpha @ sign_patterns(3).T).unsqueeze(1)  # (G, 1, 8): all 2^I values of b^T alpha
    best = (every - target.unsqueeze(2)).abs().min(2).values
    assert torch.allclose(got, best)


def test_closed_form_coordinates_minimise_the_quadratic_model():
    torch.manual_seed(3)
    g_, n, i = 5, 30, 4
    bases = sign_patterns(i)[torch.randint(0, 2**i, (g_, n))]
    old = torch.randn(g_, n, dtype=torch.float64)
    g = torch.randn(g_, n, dtype=torch.float64) * 1e-2
    h = torch.rand(g_, n, dtype=torch.float64) + 0.1
    mask = torch.ones(g_, i, dtype=torch.bool)
    mask[0, 3] = False
    alpha = closed_form_alpha(bases, old, g, h, mask, ridge=0.0).to(torch.float64)
    assert (alpha[0, 3] == 0).all()

    def model(a):  # Eq. 10 at B_new a, inactive slots held at 0
        return quadratic_model(w_hat(bases, a * mask), old, g, h).sum()

    a = alpha.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(a), a)
    assert (grad * mask).abs().max() < 1e-8  # stationary ...
    for _ in range(20):  # ... and a minimum (H > 0 makes the model convex in alpha)
        assert model(alpha) <= model(alpha + 1e-2 * torch.randn_like(alpha)) + 1e-12
    # with lambda = 1e-6 (the paper's) the answer moves by little
    ridged = closed_form_alpha(bases, old, g, h, mask).to(torch.float64)
    assert torch.allclose(ridged, alpha, atol=1e-5)


def test_a_bases_step_never_raises_the_quadratic_model():
    torch.manual_seed(4)
    w = torch.randn(6, 1, 5, 5)
    q = ALQWeightQuantizer(w, Grouping("kernel"), i_max=3)
    q.capture = True
    for _ in range(3):
        out = q(torch.empty(0))
        (out * torch.randn_like(out)).sum().backward()
        before = q.w_hat.detach().clone()
        grad = q.w_hat.grad.clone()
        state = copy.deepcopy(q.w_state)
        q.bases_step(lr=1e-2)
        if state is None:
            state = AMSGradState(before)
        state.update(grad)
        after = q.groups().detach()
        # Eq. 19 cannot raise the model; Eq. 23's lambda = 1e-6 costs at most lambda |alpha|^2 / 2
        assert (quadratic_model(after, before, state.g(1e-2), state.h()) <= 1e-5).all()
        assert not torch.equal(after, before)  # the step moved the weights
        assert (q.alpha >= 0).all()


# -- flips, pruning, storage ---------------------------------------------------------------------


def test_a_negative_coordinate_flips_its_basis_and_leaves_w_hat_unchanged():
    torch.manual_seed(5)
    bases = sign_patterns(3)[torch.randint(0, 8, (4, 20))]
    alpha = torch.randn(4, 3)
    before = w_hat(bases, alpha)
    negative = alpha < 0
    flipped_bases, flipped_alpha = bases.clone(), alpha.clone()
    sign = flip_negative(flipped_bases, flipped_alpha)
    assert negative.any() and torch.equal(sign < 0, negative)
    assert (flipped_alpha >= 0).all()
    assert torch.allclose(w_hat(flipped_bases, flipped_alpha), before)
    assert torch.equal(flipped_bases[negative.unsqueeze(1).expand_as(bases)],
                       -bases[negative.unsqueeze(1).expand_as(bases)])


def test_a_coordinate_step_that_crosses_zero_flips_the_basis():
    torch.manual_seed(6)
    q = ALQWeightQuantizer(torch.randn(2, 40), Grouping("channel"), i_max=2)
    bases = q.bases.clone()
    smallest = q.alpha.detach()[0, 1].item()
    q.alpha.grad = torch.zeros_like(q.alpha)
    q.alpha.grad[0, 1] = 1.0  # AMSGrad's first step moves alpha by lr, whatever the gradient's size
    q.coordinate_step(lr=smallest + 0.5, l2=0.0)
    assert q.alpha[0, 1].item() == pytest.approx(0.5, abs=1e-5)
    assert torch.equal(q.bases[0, :, 1], -bases[0, :, 1]) and torch.equal(q.bases[1], bases[1])


def test_eq13_is_the_model_increase_of_zeroing_one_coordinate():
    torch.manual_seed(7)
    alpha, g, h = torch.rand(10), torch.randn(10), torch.rand(10) + 0.1

    def model(a):  # Eq. 12 around alpha
        d = a - alpha
        return (g * d).sum() + 0.5 * (h * d * d).sum()

    f = prune_increment(g, h, alpha)
    for i in range(10):
        zeroed = alpha.clone()
        zeroed[i] = 0
        assert f[i].item() == pytest.approx(model(zeroed).item(), rel=1e-5)


def test_pruning_removes_exactly_m_p_coordinates_with_the_smallest_increase():
    torch.manual_seed(8)
    scores = [torch.rand(20, 4), torch.rand(30, 4)]
    scores[0][3] = math.inf  # an inactive slot is never chosen
    m_p, n = 17, 32
    chosen = select_for_pruning(scores, [n, n], remove_bits=m_p * n, top_fraction=1.0)
    assert sum(len(c) for c in chosen) == m_p
    picked = torch.cat([scores[l].reshape(-1)[c] for l, c in enumerate(chosen)])
    rest = torch.cat([torch.ones_like(s.reshape(-1), dtype=torch.bool).index_fill_(0, c, False)
                      for s, c in zip(scores, chosen)])
    everything = torch.cat([s.reshape(-1) for s in scores])
    assert picked.max() <= everything[rest].min()


def test_pruning_resorts_each_layers_top_k_percent_globally():
    # Layer 0's scores are all lower, but only its lowest 10 % are candidates (App. B.1).
    scores = [torch.arange(100.0).reshape(25, 4) / 1000, 1 + torch.arange(100.0).reshape(25, 4)]
    chosen = select_for_pruning(scores, [50, 50], remove_bits=15 * 50, top_fraction=0.1)
    assert chosen[0].tolist() == list(range(10)) and chosen[1].tolist() == list(range(5))


def test_pruning_keeps_a_layers_last_coordinate():
    scores = [torch.tensor([[0.0, 0.1]]), torch.tensor([[5.0, 6.0, 7.0]])]
    chosen = select_for_pruning(scores, [1, 1], remove_bits=4, top_fraction=1.0)
    assert chosen[0].tolist() == [0] and chosen[1].tolist() == [0, 1]  # 3 of the 4 bits asked


def _prune_one_of_two(withhold_gradients: bool = False):
    """One coordinate of two removed by ALQ's pruning phase on a loss that needs only the first.

    A linear layer of two output rows (channel-wise groups, one basis each): the loss is the
    squared error of output 0 against noisy targets of that row, and ignores output 1. Row 0's
    coordinate (0.5) is the smaller, row 1's (1.0) the larger. Returns the rows removed and the
    loss of the pruned layer relative to the unpruned one.
    """
    gen = torch.Generator().manual_seed(0)
    w = torch.stack([0.5 * torch.ones(64), torch.ones(64)]) * torch.randn(2, 64, generator=gen).sign()
    q = ALQWeightQuantizer(w, Grouping("channel"), i_max=1)
    assert q.alpha.detach().flatten().tolist() == pytest.approx([0.5, 1.0])
    removed = []

    def prune(t: int) -> None:
        if t == 9:  # after ten batches' momenta, remove one coordinate's 64 bits
            chosen = select_for_pruning([q.prune_scores(1e-3)], [64], 64, 1.0)[0]
            removed.extend(chosen.tolist())
            q.remove(chosen)

    stepper = _ALQSteps("prune", [q], [], 1e-3, 10, 0.0, prune)
    xs = [torch.randn(32, 64, generator=gen) for _ in range(11)]
    targets = [x @ w[0] + 0.5 * torch.randn(32, generator=gen) for x in xs]

    def loss(x, y):
        return ((x @ q(w).T)[:, 0] - y).pow(2).mean()

    before = float(loss(xs[-1], targets[-1]).detach())
    for x, y in zip(xs[:10], targets[:10]):
        stepper.zero_grad()
        loss(x, y).backward()
        if withhold_gradients:
            q.alpha.grad = torch.zeros_like(q.alpha)
        stepper.step()
    return removed, float(loss(xs[-1], targets[-1]).detach()) / before


def test_pruning_removes_what_the_loss_model_needs_least_not_the_smallest_coordinate():
    removed, ratio = _prune_one_of_two()
    assert removed == [1]  # row 1: the larger coordinate, which the loss does not see
    assert ratio == pytest.approx(1.0)
    # Without the gradients' momenta Eq. 13 is magnitude pruning, and would remove row 0.
    removed, ratio = _prune_one_of_two(withhold_gradients=True)
    assert removed == [0] and ratio > 2


def test_storage_is_eq26_plus_the_width_table_by_hand():
    q = ALQWeightQuantizer(torch.randn(4, 64), Grouping("channel"), i_max=6)
    q.remove(torch.tensor([2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]))
    assert q.group_widths().tolist() == [2, 1, 0, 3]
    # 6 bases x 64 weights + 6 coordinates x 32 bits + 4 groups x ceil(log2(7)) = 3 bits
    assert q.storage_bits() == 6 * 64 + 6 * 32 + 4 * 3 == 588
    assert q.scale_bits() == 6 * 32 + 4 * 3
    assert storage_bits(torch.tensor([2, 1, 0, 3]), 64, 6) == 588
    # Eq. 26 itself (without the table): r_s = 32 N / (I N + 32 I N / n)
    n_weights, i_avg = 256, 6 / 4
    assert 32 * n_weights / (6 * 64 + 6 * 32) == pytest.approx(
        32 * n_weights / (i_avg * n_weights + 32 * i_avg * n_weights / 64))


def test_lenet5_sketched_at_i_max_has_the_size_of_eq26_and_a_1722_kb_float_model(lenet, host):
    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    assert profile.weight_numel * 32 / 8 / 1000 == 1722.0  # Table 2's "1720KB"
    layers = attach_alq(model, profile, i_max=2)
    assignment = assignment_from_model(model, profile)
    assignment.validate(profile)
    groups = {"conv1": (20, 25), "conv2": (50, 500), "fc1": (1000, 400), "fc2": (10, 500)}
    assert {n: (q.group_widths().numel(), q.group_size) for n, q in layers.items()} == groups
    by_hand = sum(g * 2 * n + 32 * g * 2 + g * 2 for g, n in groups.values())  # table: 2 bits
    size = host.objectives.get("size").evaluate(profile, assignment)
    assert size * 1e6 * 8 == pytest.approx(by_hand)


def test_an_average_below_one_bit_is_representable(lenet, tmp_path):
    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    layers = attach_alq(model, profile, i_max=2)
    for q in layers.values():  # remove every second group and one basis of the rest
        g = q.group_widths().numel()
        drop = [k * 2 + s for k in range(g) for s in ((0, 1) if k % 2 else (1,))]
        q.remove(torch.tensor(drop))
    assignment = assignment_from_model(model, profile)
    assignment.validate(profile)
    assert assignment.average_weight_bits() < 1
    path = assignment.save(tmp_path / "a.json")
    assert PrecisionAssignment.load(path) == assignment
    removed = layers["fc1"].grouping.to_groups(assignment["fc1:weight"])
    assert (removed[1::2] == 0).all() and (removed[::2] == 1).all()
    x = torch.randn(3, 1, 28, 28)
    assert torch.isfinite(model(x)).all()


# -- groups, schedule, activations, legalisation ------------------------------------------------


def test_auto_groups_follow_the_paper_on_lenet5_and_kernel_gives_its_convolutions():
    assert str(choose_grouping((20, 1, 5, 5))) == "kernel"  # no structure reaches 32; largest
    assert str(choose_grouping((50, 20, 5, 5))) == "channel"  # 500 weights: in 32-512
    assert str(choose_grouping((50, 20, 5, 5), "kernel")) == "kernel"  # the paper's LeNet-5
    assert str(choose_grouping((500, 800))) == "subchannel(2)"  # the paper's fc1
    assert str(choose_grouping((10, 500))) == "channel"
    assert str(choose_grouping((128, 64, 3, 3))) == "pixel"  # the paper's VGG / ResNet
    assert str(choose_grouping((10, 8192))) == "subchannel(16)"  # the paper's VGG fc
    w = torch.randn(6, 4, 3, 3)
    g = Grouping("pixel")
    groups = g.to_groups(w)
    assert groups.shape == (54, 4) and torch.equal(groups[0], w[0, :, 0, 0])
    assert torch.equal(g.from_groups(groups, w.shape), w)


def test_the_schedule_keeps_the_papers_proportions_and_fits_the_budget():
    phases = plan_phases(231 * 40, 6)  # the paper's LeNet-5 epochs, 40 steps each
    assert sum(p.steps for p in phases) == 231 * 40
    assert [(p.kind, p.steps) for p in phases[:5]] == [("bases", 200), ("coords", 400), ("prune", 40),
                                                       ("bases", 400), ("coords", 800)]
    assert phases[-1].kind == "final" and phases[-1].steps == 1200


@pytest.mark.parametrize("steps, rounds, kept, prune", [
    (231 * 4, 6, 6, [20] * 6),  # the paper's epochs at 4 steps: a round's 4 would be too few
    (140, 6, 3, [20] * 3),      # 2 epochs of mnist-mini: pruning at most half the budget
    (70, 2, 1, [20]),
    (16, 2, 1, [8]),            # under 40 steps: one round, over half of them
])
def test_every_pruning_round_gets_its_minimum_of_batches(steps, rounds, kept, prune):
    phases = plan_phases(steps, rounds)
    assert sum(p.steps for p in phases) == steps
    assert max(p.round for p in phases) == kept
    assert [p.steps for p in phases if p.kind == "prune"] == prune
    assert MIN_PRUNE_BATCHES == 20


def test_the_bits_schedule_is_eq28_and_ends_at_the_target():
    goals, ratio = bits_schedule(600.0, 100.0, 6, 0.3)
    assert ratio == 0.3
    assert goals[:4] == pytest.approx([600 * 0.7**r for r in range(1, 5)])
    assert goals[-1] == 100.0 and all(g >= 100 for g in goals)
    goals, ratio = bits_schedule(600.0, 10.0, 2, 0.3)  # 0.3 twice would miss the target
    assert ratio == pytest.approx(1 - (10 / 600) ** 0.5) and goals[-1] == 10.0


def test_activations_take_the_nearest_of_the_multi_bit_levels():
    torch.manual_seed(9)
    q = MultiBitActivationQuantizer(2)
    x = torch.relu(torch.randn(4000))
    q.train()
    q(x)
    assert (q.gamma > 0).all()
    levels = q.x_ref + sign_patterns(2) @ q.gamma
    q.eval()
    y = q(x)
    nearest = levels[(x.unsqueeze(1) - levels).abs().argmin(1)]
    assert torch.allclose(y, nearest)
    # gradients pass straight through inside the levels' range, and are 0 outside
    xg = (torch.linspace(-5, 5, 101)).requires_grad_(True)
    q(xg).sum().backward()
    inside = (xg >= levels.min()) & (xg <= levels.max())
    assert torch.equal(xg.grad, inside.float())


def test_activation_fit_beats_uniform_spacing_of_the_same_range():
    torch.manual_seed(10)
    x = torch.relu(torch.randn(5000))
    q = MultiBitActivationQuantizer(2)
    q.train()
    q(x)
    q.eval()
    err = ((q(x) - x) ** 2).mean()
    gamma = torch.tensor([x.max() / 4, x.max() / 8])  # four evenly spaced levels over [0, max]
    spaced = MultiBitActivationQuantizer(2)
    spaced.x_ref.fill_(x.max() / 2)
    spaced.gamma.copy_(gamma)
    spaced._calibrated = True
    spaced.eval()
    assert err < ((spaced(x) - x) ** 2).mean()


def test_alq_model_quantizes_inputs_and_calibrates_them(lenet):
    from mpsearch.data import ImageData

    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    attach_alq(model, profile, i_max=2, activation_bits=2)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    data = ImageData(images, torch.zeros(64, dtype=torch.int64), tuple("0123456789"), (0.1307,), (0.3081,))
    calibrate_activations(model, data, 32)
    assignment = assignment_from_model(model, profile)
    assert all(assignment[f"{n}:input"] == 2 for n in ("conv1", "conv2", "fc1", "fc2"))
    assert all(bool(model.get_submodule(n).input_quantizer.calibrated) for n in ("conv1", "fc2"))


def test_a_backend_that_rounds_widths_up_gets_wider_groups_with_w_hat_unchanged(lenet):
    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    layers = attach_alq(model, profile, i_max=3)
    for q in layers.values():
        q.remove(torch.arange(0, q.mask.numel(), 5))  # some groups at 2 bits
    before = {n: q.groups().detach().clone() for n, q in layers.items()}

    class Even:  # a backend with even widths only
        @staticmethod
        def legalise(a):
            return a.map(lambda g, b: b + b % 2)

    narrow = assignment_from_model(model, profile)
    wanted = Even.legalise(narrow)
    apply_assignment(model, profile, wanted)  # what the trial does with the legal widths
    now = assignment_from_model(model, profile)
    for g in now.weight_groups:
        assert torch.equal(now[g], wanted[g]) and int((now[g] % 2).sum()) == 0
        assert now.scale_bits(g) > narrow.scale_bits(g)  # the new coordinates are stored too
    assert int(layers["fc1"].group_widths().max()) == 4  # beyond i_max = 3: the slots grew
    for n, q in layers.items():
        assert torch.equal(q.groups().detach(), before[n])


@pytest.mark.parametrize("space, message", [
    ({"target_bits": Param(value=0.0)}, "positive"),
    ({"i_max": Param(value=9)}, "1-8"),
    ({"rounds": Param(low=1.0, high=3.0)}, "integer low and high"),
    ({"prune_ratio": Param(value=1.0)}, r"\(0, 1\)"),
    ({"structure": Param(value="row")}, "not one of"),
    ({"activation_bits": Param(value=True)}, "integer"),
    ({"targetbits": Param(value=1.0)}, "unknown parameter"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        ALQStrategy.check_space(space, "spec: strategy[0].space")


def test_default_space_draws_the_papers_hyperparameters():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    drawn = ALQStrategy().suggest(trial, {}, "alq")
    assert set(trial.params) == {"alq.target_bits", "alq.rounds", "alq.prune_ratio", "alq.i_max",
                                 "alq.activation_bits"}
    assert drawn["lr_bases"] == 1e-3 and drawn["structure"] == "auto" and drawn["top_k"] == 1.0
    ALQStrategy.resolve(drawn)
