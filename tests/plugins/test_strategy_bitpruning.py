"""The ``bitpruning`` strategy: conformance, the bit loss's normalisation and weights, ceiling, clipping."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mpsearch.errors import MpsearchError
from mpsearch.models import model_profile
from mpsearch.objectives import Objective
from mpsearch.plugins.strategy_bitpruning import (BitPruningStrategy, BitRegulariser, bit_weights,
                                                  bitpruning_model, bits_learning_rate,
                                                  criterion_objective)
from mpsearch.quant import (FixedBits, LearnableBits, apply_assignment, assignment_from_model,
                            bit_parameters, freeze_bits, project_bits, quantizers)
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase, base_spec
from mpsearch.trial import TrialContext, run_trial

optuna = pytest.importorskip("optuna")

# The widths' learning rate is "auto": whatever the trial's steps, a width could fall to 1 bit.
STRONG = {"gamma": 3.0, "split": 0.8}
WEAK = {"gamma": 0.01, "split": 0.8}


def discretise(model, profile, legalise):
    """What a trial does to a searched model: ceil the widths, legalise them, set them on the model."""
    freeze_bits(model)
    legal = legalise(assignment_from_model(model, profile))
    apply_assignment(model, profile, legal)
    return legal


class TestBitPruningConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "bitpruning"

    @pytest.fixture
    def params(self):
        return STRONG  # the same trial as stronger_params: the suite runs it once

    @pytest.fixture
    def stronger_params(self):
        return STRONG

    @pytest.fixture
    def min_accuracy(self):
        return 0.7  # the float start has 0.887; measured 0.767 at 2.1 bits per weight, 2 per input

    @pytest.fixture
    def weaker_params(self):
        return WEAK

    def test_search_then_finetune_split_a_one_epoch_trial(self, trial):
        history = trial.outcome.attrs["history"]
        assert [h["phase"] for h in history] == ["search", "finetune"]
        search, finetune = history
        # Every epoch records the widths; fine-tuning runs at the ceiled, legal ones.
        assert 1 <= search["weight_bits"] < 8 and 1 <= search["act_bits"] < 8
        assignment = trial.assignment()
        assert finetune["weight_bits"] == pytest.approx(assignment.average_weight_bits())
        assert finetune["act_bits"] == pytest.approx(assignment.average_activation_bits())
        attrs = trial.outcome.attrs
        assert attrs["search_epochs"] == pytest.approx(0.8)
        assert attrs["finetune_epochs"] == pytest.approx(0.2)
        assert attrs["epochs_trained"] == pytest.approx(1.0)  # 13 + 3 of 16 steps
        # The ceiling never lowers a width: the final average is at least the learned one.
        assert attrs["average_weight_bits"] >= attrs["search_weight_bits"]

    def test_the_widths_fall_by_the_regulariser_and_order_by_their_cost(self, run_strategy_trial,
                                                                         spec_dict):
        # 13 search steps at the automatic rate (2 * 7 / 13 per step). With the bitops
        # criterion a width's pull is its layer's MACs: conv2 does 4 times fc1's and fc1 80
        # times fc2's, so their widths end in that order. At lr_bits 0 all would stay at 8.
        done = run_strategy_trial(spec_dict, "bitpruning", {"gamma": 1.0, "split": 0.8,
                                                            "criterion": "bitops"})
        assert not done.outcome.failed, done.outcome.attrs.get("fail_reason")
        attrs = done.outcome.attrs
        learned = attrs["search_widths"]
        assert len(learned) == 8 and sum(w < 4 for w in learned.values()) >= 5, learned
        for kind in ("weight", "input"):
            conv2, fc1, fc2 = (learned[f"{layer}:{kind}"] for layer in ("conv2", "fc1", "fc2"))
            assert conv2 + 0.5 < fc1 and fc1 + 0.5 < fc2, learned
        assert attrs["lr_bits"] == pytest.approx(2 * 7 / 13)
        # The uniform criterion at channel granularity pulls the inputs as hard as the weights.
        done = run_strategy_trial(spec_dict, "bitpruning", {**STRONG, "granularity": "channel"})
        attrs = done.outcome.attrs
        assert attrs["search_weight_bits"] < 4 and attrs["search_act_bits"] < 4, attrs["search_widths"]


# -- a quantized LeNet-5 without training ------------------------------------------------

@pytest.fixture(scope="module")
def builtins():
    """The built-in plugins, loaded once for the module's many small tests."""
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False)


@pytest.fixture(scope="module")
def lenet_profile(builtins):
    return model_profile(builtins.models.get("lenet5"), 10, (1, 28, 28))


@pytest.fixture
def lenet(builtins, lenet_profile):
    def make(**options):
        model = builtins.models.get("lenet5").create(10, (1, 28, 28), seed=0)
        return bitpruning_model(model, lenet_profile, **options)

    return make


def _lambda_of(model, lambdas_by_module) -> dict[str, torch.Tensor]:
    """Group -> the lambda of its width."""
    return {g: lambdas_by_module[id(q.bits)] for g, q in quantizers(model).items()
            if id(q.bits) in lambdas_by_module}


def _lambdas(model, profile, objective=None):
    modules, lambdas = bit_weights(model, profile, objective)
    return _lambda_of(model, {id(m): lam for m, lam in zip(modules, lambdas)})


CRITERIA = ["uniform", "bitops", "size", "memory", "memory@128", "footprint", "footprint@128"]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("granularity, first_last", [("network", 0), ("layer", 0), ("channel", 0),
                                                     ("layer", 4)])
def test_an_all_8_bit_network_costs_exactly_gamma(builtins, lenet, lenet_profile, criterion, granularity,
                                                  first_last):
    # "produces a loss of 1.0 for an 8-bit network" (Sec. II-B), times gamma.
    model = lenet(granularity=granularity, first_last_bits=first_last)
    objective = None if criterion == "uniform" else builtins.objectives.get(criterion)
    regulariser = BitRegulariser(model, lenet_profile, 2.5, objective, criterion)
    assert float(regulariser().detach()) == pytest.approx(2.5, rel=1e-6)
    # Linear in the widths: all at 4 bits costs half.
    with torch.no_grad():
        for w in bit_parameters([model]):
            w.fill_(4.0)
    assert float(regulariser().detach()) == pytest.approx(1.25, rel=1e-6)


def test_uniform_weighs_every_learned_group_the_same(lenet, lenet_profile):
    lam = _lambdas(lenet(granularity="layer"), lenet_profile)
    assert len(lam) == 8  # 4 layers x (weights, inputs), first and last included
    assert all(float(v) == pytest.approx(1 / 64) for v in lam.values())
    # Network granularity: one width for all weights and one for all inputs.
    model = lenet(granularity="network")
    assert len(bit_parameters([model])) == 2
    assert len({id(q.bits) for g, q in quantizers(model).items() if g.endswith(":weight")}) == 1
    _, lambdas = bit_weights(model, lenet_profile)
    assert [float(v) for v in lambdas] == pytest.approx([1 / 16, 1 / 16])


@pytest.mark.parametrize("granularity", ["layer", "channel", "kernel"])
def test_uniform_weighs_every_layers_weights_and_inputs_alike_at_any_granularity(lenet, lenet_profile,
                                                                                 granularity):
    # "weighs all layers equally" (Sec. II-B): finer weight widths share their layer's weight,
    # so the 4 input widths keep half of the pull however many weight widths there are.
    lam = _lambdas(lenet(granularity=granularity), lenet_profile)
    totals = {g: float(v.double().sum()) for g, v in lam.items()}
    assert len(totals) == 8 and all(t == pytest.approx(1 / 64) for t in totals.values())
    for group, v in lam.items():  # and evenly within a layer
        assert float(v.min()) == pytest.approx(float(v.max())), group
    assert (lam["conv2:weight"].numel() > 1) == (granularity != "layer")


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_bitops_weighs_each_group_by_its_macs(builtins, lenet, lenet_profile, granularity):
    model = lenet(granularity=granularity)
    lam = _lambdas(model, lenet_profile, builtins.objectives.get("bitops"))
    ratios = []
    for layer in lenet_profile:
        w, a = lam[layer.weight_group], lam[layer.input_group]
        # each output channel of a layer does macs / out_channels of its MACs
        assert w.numel() == (1 if granularity == "layer" else layer.out_channels)
        ratios += [float(v) / (layer.macs / w.numel()) for v in w.flatten()]
        ratios.append(float(a) / layer.macs)
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-5)


@pytest.mark.parametrize("criterion, batch", [("footprint", 1), ("footprint@128", 128)])
def test_footprint_weighs_each_group_by_its_elements(builtins, lenet, lenet_profile, criterion, batch):
    # Table IV: memory at batch 1 (weight-heavy) and 128 (activation-heavy).
    lam = _lambdas(lenet(granularity="layer"), lenet_profile, builtins.objectives.get(criterion))
    ratios = []
    for layer in lenet_profile:
        ratios.append(float(lam[layer.weight_group]) / layer.weight_numel)
        ratios.append(float(lam[layer.input_group]) / (layer.input_numel * batch))
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-5)


def test_a_learned_width_is_ceiled_and_the_model_runs_at_it(lenet, lenet_profile):
    model = lenet(granularity="layer")
    qs = quantizers(model)
    values = {"conv1:weight": 3.2, "conv2:input": 3.0, "fc1:weight": 1.0, "fc2:input": 7.01}
    with torch.no_grad():
        for group, v in values.items():
            qs[group].bits.value.fill_(v)
    legal = discretise(model, lenet_profile, lambda a: a)
    expected = {"conv1:weight": 4, "conv2:input": 3, "fc1:weight": 1, "fc2:input": 8}
    for group, bits in expected.items():
        assert legal[group] == bits
        assert quantizers(model)[group].integer_bits() == bits
    assert not bit_parameters([model])  # frozen: nothing left to learn


def test_legalisation_that_raises_widths_reaches_the_model(lenet, lenet_profile):
    model = lenet(granularity="channel")
    with torch.no_grad():
        for w in bit_parameters([model]):
            w.copy_(torch.linspace(1.5, 5.5, w.numel()).reshape(w.shape))

    def powers_of_two(assignment):
        return assignment.map(lambda g, b: (torch.as_tensor(b).float().log2().ceil().exp2()
                                            .to(torch.int64)) if not isinstance(b, int)
                              else 2 ** math.ceil(math.log2(b)))

    legal = discretise(model, lenet_profile, powers_of_two)
    for group, q in quantizers(model).items():
        bits = torch.as_tensor(q.integer_bits())
        assert torch.equal(bits, torch.as_tensor(legal[group]))
        assert set(bits.flatten().tolist()) <= {2, 4, 8}
    model(torch.randn(2, 1, 28, 28))


def test_widths_never_fall_below_one_bit_and_can_grow_again(lenet, lenet_profile):
    model = lenet(granularity="layer")
    regulariser = BitRegulariser(model, lenet_profile, 1000.0)
    widths = bit_parameters([model])
    optimizer = torch.optim.Adam(widths, lr=0.5)
    for _ in range(40):
        optimizer.zero_grad()
        regulariser().backward()
        optimizer.step()
        project_bits([model])
        assert all(float(w.detach().min()) >= 1.0 for w in widths)
    assert all(float(w.detach()) == 1.0 for w in widths)
    # At the bound the gradient still passes, so the data loss could raise a width.
    w = LearnableBits(1.0)
    (-w()).backward()
    assert float(w.value.grad) == -1.0
    # A value set below 1 from outside is read as 1.
    with torch.no_grad():
        w.value.fill_(0.3)
    assert float(w().detach()) == 1.0
    assert set(discretise(model, lenet_profile, lambda a: a).values()) == {1}


def test_first_last_bits_pins_the_end_layers_outside_the_loss(lenet, lenet_profile):
    model = lenet(granularity="layer", first_last_bits=8)
    qs = quantizers(model)
    for layer in ("conv1", "fc2"):
        for kind in ("weight", "input"):
            assert isinstance(qs[f"{layer}:{kind}"].bits, FixedBits)
            assert qs[f"{layer}:{kind}"].integer_bits() == 8
    assert all(isinstance(qs[f"{l}:{k}"].bits, LearnableBits) for l in ("conv2", "fc1")
               for k in ("weight", "input"))
    assert len(_lambdas(model, lenet_profile)) == 4


def test_a_criterion_without_a_differentiable_form_is_refused(lenet, lenet_profile):
    class Latency(Objective):
        unit = "ms"
        has_differentiable = False

        def differentiable(self, profile, bits, scale_bits=None):
            raise NotImplementedError

    class Constant(Objective):
        def differentiable(self, profile, bits, scale_bits=None):
            return torch.tensor(1.0)

    model = lenet()
    with pytest.raises(MpsearchError, match="'latency' has no differentiable form"):
        BitRegulariser(model, lenet_profile, 1.0, Latency(), "latency")
    with pytest.raises(MpsearchError, match="does not depend on the widths"):
        BitRegulariser(model, lenet_profile, 1.0, Constant(), "constant")


def test_any_registered_objective_is_a_criterion_and_a_typo_gets_a_suggestion():
    from mpsearch.host import PluginHost

    host = PluginHost(entry_points=False)
    generic = host.backends.get("generic")
    context = SimpleNamespace(
        objective=lambda name: host.objectives.get(name).for_backend(generic, "generic"))
    assert criterion_objective(context, "uniform") is None
    assert criterion_objective(context, "footprint@128").batch_size == 128  # not a study objective
    with pytest.raises(MpsearchError, match="Did you mean 'bitops'"):
        criterion_objective(context, "bitopz")


def test_an_unknown_criterion_fails_the_trial_before_training():
    outcome = run_trial(parse_spec(base_spec("bitpruning")), 0, "bitpruning",
                        {**STRONG, "criterion": "footprint@12"})
    assert outcome.failed
    assert "Did you mean 'footprint@128'" in outcome.attrs["fail_reason"]
    assert outcome.attrs["history"] == []


def test_finetuning_uses_a_tenth_of_the_learning_rate_and_the_options_reach_the_trial(monkeypatch):
    calls = []
    fit = TrialContext.fit

    def spy(self, model, epochs, groups=None, **kw):
        calls.append((kw.get("phase"), epochs, kw.get("lr"), kw.get("extra_loss") is not None))
        return fit(self, model, epochs, groups, **kw)

    monkeypatch.setattr(TrialContext, "fit", spy)
    raw = base_spec("bitpruning")
    raw["training"]["epochs"] = 2
    raw["data"]["train_subset"] = 300
    params = {**STRONG, "split": 0.75, "granularity": "channel", "criterion": "footprint@128",
              "first_last_bits": 8}
    outcome = run_trial(parse_spec(raw), 0, "bitpruning", params)
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    assert calls == [("search", 1.5, None, True), ("finetune", 0.5, pytest.approx(0.005), False)]
    assert [h["phase"] for h in outcome.attrs["history"]] == ["search", "search", "finetune"]
    assert outcome.attrs["criterion"] == "footprint@128"


@pytest.mark.parametrize("space, message", [
    ({"split": Param(value=1.0)}, "strictly between 0 and 1"),
    ({"gamma": Param(low=0.0, high=1.0)}, "positive"),
    ({"lr_bits": Param(value=-0.1)}, "positive"),
    ({"granularity": Param(value="block")}, "not a granularity"),
    ({"first_last_bits": Param(value=33)}, "not a width"),
    ({"init_bits": Param(value=0.5)}, "width from 1"),
    ({"criterion": Param(value=3)}, "uniform"),
    ({"lambda": Param(value=1.0)}, "unknown parameter"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        BitPruningStrategy.check_space(space, "spec: strategy[0].space")


def test_default_space_draws_gamma_and_split_and_sets_the_widths_rate_by_the_budget():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    drawn = BitPruningStrategy().suggest(trial, {}, "bitpruning")
    assert set(trial.params) == {"bitpruning.gamma", "bitpruning.split"}
    assert trial.distributions["bitpruning.gamma"].log
    fixed = ("criterion", "granularity", "first_last_bits", "init_bits", "lr_bits")
    assert {k: drawn[k] for k in fixed} == {"criterion": "uniform", "granularity": "layer",
                                            "first_last_bits": 0, "init_bits": 8, "lr_bits": "auto"}
    # "auto": at full pull a width can just reach 1 bit over the search's cosine schedule.
    assert bits_learning_rate("auto", 8, 57) == pytest.approx(14 / 57)
    assert bits_learning_rate("auto", 8, 5000) == pytest.approx(14 / 5000)
    assert bits_learning_rate(0.3, 8, 57) == 0.3
