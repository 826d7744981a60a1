"""One trial's host: a diverged trial fails with its reason; every epoch records the widths."""

from __future__ import annotations

import math

import pytest
import torch

from mpsearch.assignment import PrecisionAssignment
from mpsearch.data import ImageData
from mpsearch.quant import LearnableBits, MinMaxQuantizer, quantize_at, quantize_model
from mpsearch.testing import tiny_model, tiny_profile
from mpsearch.record import WIDTHS_PREFIX
from mpsearch.trial import CHANCE_SIGMAS, LOSS_BLOWUP, divergence, width_metrics


def labels(counts: list[int]) -> ImageData:
    """A validation split with ``counts[c]`` images of class ``c``."""
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    return ImageData(torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y,
                     tuple(str(c) for c in range(len(counts))), (0.5,), (0.25,))


VAL = labels([100] * 9 + [300])  # 1,200 images; the most frequent class is a quarter of them
CHANCE = 0.25 + CHANCE_SIGMAS * math.sqrt(0.25 * 0.75 / 1200)  # 0.275


def rows(*accuracies, loss=0.3, phase="search"):
    return [{"epoch": i, "phase": phase, "loss": loss, "val_accuracy": a} for i, a in enumerate(accuracies)]


def test_a_trial_above_chance_has_not_diverged():
    assert divergence(rows(0.5, 0.9), 0.9, VAL) is None
    assert divergence(rows(0.9, 0.3), 0.3, VAL) is None  # low, yet not chance: a point of the front
    assert divergence([], CHANCE + 0.005, VAL) is None


def test_accuracy_at_chance_names_the_value_and_the_epoch_it_stayed_there_from():
    reason = divergence(rows(0.9, 0.26, 0.24, 0.25), 0.25, VAL)
    assert reason.startswith("diverged: validation accuracy 0.2500 is chance level since epoch 1 (search)")
    assert "25.00% of the validation split" in reason and "\n" not in reason
    # a collapse after the last reported epoch, and post-training quantization (no epoch)
    assert "at the end" in divergence(rows(0.9), 0.1, VAL)
    assert "with no epoch trained" in divergence([], 0.27, VAL, 0.9)  # from a float start at 0.9
    # post-training quantization of random weights (no float start, or one at chance) loses nothing
    assert divergence([], 0.27, VAL) is None
    assert divergence([], 0.27, VAL, 0.26) is None


def test_a_loss_that_blew_up_names_the_epoch_and_the_value_even_if_accuracy_recovered():
    history = rows(0.5, 0.8, 0.9)
    history[1]["loss"] = 1234.5
    reason = divergence(history, 0.9, VAL)
    limit = LOSS_BLOWUP * math.log(10)
    assert reason == (f"diverged: the training loss reached 1234 at epoch 1 (search), above 10 x ln(10) "
                      f"= {limit:.3g}; lower the learning rates or the regulariser's weight.")
    history[1]["loss"] = limit * 0.99  # high, but not ten times a uniform guess
    assert divergence(history, 0.9, VAL) is None


def test_width_metrics_read_every_quantizer_fractional_while_learned():
    profile = tiny_profile()
    model = quantize_model(tiny_model(), profile, weight=lambda layer: MinMaxQuantizer(LearnableBits(5.5)),
                           activation=lambda layer: None)
    widths = width_metrics(model)
    assert set(widths) == {f"{WIDTHS_PREFIX}{layer.weight_group}" for layer in profile}
    assert set(widths.values()) == {5.5}
    fixed = quantize_at(tiny_model(), profile, PrecisionAssignment.uniform(profile, 3, 6), "minmax")
    assert sorted(set(width_metrics(fixed).values())) == [3.0, 6.0]
    assert width_metrics(tiny_model()) == {}


@pytest.fixture(scope="module")
def toy_host():
    from helpers import TOY

    from mpsearch.host import PluginHost

    return PluginHost([str(TOY)], entry_points=False)


def test_a_trial_whose_model_collapsed_fails_and_its_history_keeps_the_widths(tmp_path, toy_host):
    from helpers import toy_spec

    from mpsearch.spec import load_spec
    from mpsearch.record import ATTR_FAIL, ATTR_HISTORY
    from mpsearch.trial import run_trial

    spec = load_spec(toy_spec(tmp_path), toy_host)
    ok = run_trial(spec, 0, "toy", {"bits": 4, "fraction": 1.0, "behaviour": "ok"})
    assert not ok.failed and ok.values["accuracy"] > 0.3
    (row,) = ok.attrs[ATTR_HISTORY]
    assert {k: v for k, v in row.items() if k.startswith(WIDTHS_PREFIX)} == {
        f"{WIDTHS_PREFIX}{g}": 4.0 for layer in lenet_profile() for g in (layer.weight_group,
                                                                           layer.input_group)}
    collapsed = run_trial(spec, 0, "toy", {"bits": 4, "fraction": 1.0, "behaviour": "chance"})
    assert collapsed.failed and collapsed.values is None
    assert collapsed.attrs[ATTR_FAIL].startswith("diverged: validation accuracy 0.")
    assert "chance level at the end" in collapsed.attrs[ATTR_FAIL]


def lenet_profile():
    from mpsearch.host import PluginHost
    from mpsearch.models import model_profile

    return model_profile(PluginHost(entry_points=False).models.get("lenet5"), 10, (1, 28, 28))
