"""The built-in model plugins: LeNet-5, ResNet-20 and torchvision's classifiers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mpsearch.errors import MpsearchError, UnknownNameError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.profile import profile_model

MODEL_PLUGINS = ("mpsearch.plugins.model_lenet5", "mpsearch.plugins.model_resnet20",
                 "mpsearch.plugins.model_torchvision")


@pytest.fixture(scope="module")
def models():
    """The model registry with only the three model plugins loaded."""
    return PluginHost(MODEL_PLUGINS, builtins=False, entry_points=False).models


def quantizable_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# -- registration --------------------------------------------------------------------


@pytest.mark.parametrize("name, plugin", [
    ("lenet5", "mpsearch.plugins.model_lenet5"),
    ("resnet20", "mpsearch.plugins.model_resnet20"),
    ("torchvision:resnet18", "mpsearch.plugins.model_torchvision"),
    ("torchvision:inception_v3", "mpsearch.plugins.model_torchvision"),
])
def test_builtin_plugins_register_the_models(host, name, plugin):
    assert host.models.entry(name).plugin == plugin


# -- LeNet-5 -------------------------------------------------------------------------


def test_lenet5_has_430500_weights(models):
    model = models.get("lenet5").create(seed=0)
    # 20*1*5*5 + 50*20*5*5 + 800*500 + 500*10 = 500 + 25,000 + 400,000 + 5,000.
    assert quantizable_weights(model) == 430_500
    # 1,722,000 bytes in float32: what ALQ (Qu et al. 2020, Table 2) compresses 76x.
    assert quantizable_weights(model) * 4 == 1_722_000


def test_lenet5_outputs_ten_logits(models):
    model = models.get("lenet5").create(seed=0)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_profile_order_and_macs(models):
    profile = profile_model(models.get("lenet5").create(seed=0), (1, 28, 28))
    assert profile.names == ["conv1", "conv2", "fc1", "fc2"]
    assert profile["conv1"].macs == 20 * 25 * 24 * 24 == 288_000
    assert profile["conv2"].macs == 50 * 20 * 25 * 8 * 8 == 1_600_000
    assert profile["fc1"].weight_shape == (500, 800)
    # ReLU follows each pooled conv, so only conv1 sees signed (raw) inputs.
    assert [layer.input_signed for layer in profile] == [True, False, False, False]


def test_lenet5_adapts_to_channels_size_and_classes(models):
    model = models.get("lenet5").create(num_classes=7, input_shape=(3, 32, 32), seed=0)
    assert model.conv1.in_channels == 3
    assert model.fc1.in_features == 50 * 5 * 5  # 32 -> 28 -> 14 -> 10 -> 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_lenet5_rejects_too_small_images(models):
    with pytest.raises(MpsearchError, match="16x16"):
        models.get("lenet5").create(input_shape=(1, 12, 12))


# -- ResNet-20 -----------------------------------------------------------------------


def test_resnet20_has_269722_parameters(models):
    model = models.get("resnet20").create(seed=0)
    # By hand: stem conv 3*16*9 = 432 + BN 32; stage 1: 6 convs 16*16*9 = 13,824 + 6 BN
    # of 32 = 192; stage 2: 16*32*9 + 5*32*32*9 = 50,688 + 6*64 = 384; stage 3:
    # 32*64*9 + 5*64*64*9 = 202,752 + 6*128 = 768; fc 64*10 + 10 = 650. Total 269,722.
    total = sum(p.numel() for p in model.parameters())
    assert total == 269_722
    assert abs(total - 270_000) / 270_000 < 0.01


def test_resnet20_profile_is_19_convs_and_one_linear(models):
    profile = model_profile(models.get("resnet20"))
    assert [layer.kind for layer in profile] == ["conv2d"] * 19 + ["linear"]
    # Option A shortcuts have no 1x1 projection convolutions.
    assert all(layer.kernel_size == (3, 3) for layer in profile.layers[:19])
    assert profile.layers[-1].weight_shape == (10, 64)


def test_resnet20_outputs_ten_logits_and_adapts_its_stem(models):
    spec = models.get("resnet20")
    assert spec.create(seed=0)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = spec.create(num_classes=4, input_shape=(1, 28, 28), seed=0)
    assert gray.conv1.in_channels == 1
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_resnet20_option_a_shortcut_subsamples_and_zero_pads(models):
    model = models.get("resnet20").create(seed=0)
    shortcut = model.layer2[0].shortcut
    x = torch.randn(1, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert not list(shortcut.parameters())


# -- torchvision ---------------------------------------------------------------------


def test_torchvision_registers_every_classification_model(models):
    import torchvision.models

    listed = torchvision.models.list_models(module=torchvision.models)
    ours = [n.removeprefix("torchvision:") for n in models.names() if n.startswith("torchvision:")]
    assert ours == listed
    assert len(listed) > 70


def test_torchvision_source_scan_matches_the_imported_builders():
    # Registration reads torchvision's sources; what it finds must be what
    # torchvision itself reports once imported, docstrings included.
    import torchvision.models

    from mpsearch.plugins import model_torchvision

    scanned = model_torchvision._scan_sources(Path(torchvision.models.__file__).parent)
    truth = {name: torchvision.models.get_model_builder(name).__doc__
             for name in torchvision.models.list_models(module=torchvision.models)}
    assert sorted(scanned) == sorted(truth)
    for name, doc in truth.items():
        assert model_torchvision.describe(scanned[name]) == model_torchvision.describe(doc), name
    # With torchvision already imported, the catalogue comes from it directly.
    assert model_torchvision.catalogue() == dict(sorted(truth.items()))


def test_torchvision_specs_describe_and_size_the_models(models):
    resnet18 = models.entry("torchvision:resnet18")
    assert resnet18.description == ("ResNet-18 from Deep Residual Learning for Image "
                                    "Recognition (https://arxiv.org/abs/1512.03385).")
    # A first line that breaks after "from" is completed from the paragraph.
    assert models.entry("torchvision:inception_v3").description.startswith(
        "Inception v3 model architecture from Rethinking the Inception Architecture")
    assert models.get("torchvision:inception_v3").input_shape == (3, 299, 299)
    assert models.get("torchvision:resnet18").input_shape == (3, 224, 224)
    assert models.get("torchvision:resnet18").num_classes == 1000


def test_torchvision_registration_does_not_import_torchvision():
    # Importing torchvision.models costs seconds; the plugin reads the sources instead.
    code = (
        "import json, sys, time\n"
        "from mpsearch.host import PluginHost\n"
        "t0 = time.perf_counter()\n"
        "PluginHost(['mpsearch.plugins.model_lenet5'], builtins=False, entry_points=False)\n"
        "t1 = time.perf_counter()\n"
        f"host = PluginHost({list(MODEL_PLUGINS)!r}, builtins=False, entry_points=False)\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'imported': 'torchvision' in sys.modules, 'n': len(host.models),\n"
        "                  'extra_s': (t2 - t1) - (t1 - t0)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["imported"] is False
    assert result["n"] > 70
    assert result["extra_s"] < 1.0  # measured 0.03-0.07 s; importing torchvision takes 2 s


def test_torchvision_resnet18_has_the_published_1_81_gmacs(models):
    profile = model_profile(models.get("torchvision:resnet18"), input_shape=(3, 224, 224))
    assert profile.macs == 1_814_073_344
    assert len(profile) == 21  # 20 convolutions (3 of them 1x1 downsamples) + fc


def test_torchvision_mobilenet_v2_is_300_mmacs_with_depthwise_layers(models):
    profile = model_profile(models.get("torchvision:mobilenet_v2"))
    assert profile.macs == 300_774_272
    depthwise = [layer for layer in profile if layer.depthwise]
    assert len(depthwise) == 17  # one per inverted-residual block
    assert all(layer.kernel_size == (3, 3) for layer in depthwise)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_adapts_to_grayscale_32x32_and_10_classes(models, name):
    model = models.get(f"torchvision:{name}").create(num_classes=10, input_shape=(1, 32, 32),
                                                      seed=0)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    model.eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert profile_model(model, (1, 32, 32)).layers[0].in_channels == 1


@pytest.mark.parametrize("name, side", [("googlenet", 64), ("inception_v3", 80)])
def test_torchvision_aux_classifiers_are_off(models, name, side):
    model = models.get(f"torchvision:{name}").create(num_classes=10, input_shape=(3, side, side),
                                                      seed=0)
    model.train()  # with auxiliary classifiers the training forward returns a tuple
    out = model(torch.randn(2, 3, side, side))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_torchvision_rejects_a_non_square_vit(models):
    with pytest.raises(MpsearchError, match="square"):
        models.get("torchvision:vit_b_16").create(input_shape=(3, 224, 160))


def test_unknown_torchvision_model_suggests_the_close_name(models):
    with pytest.raises(UnknownNameError) as info:
        models.get("torchvision:resnet81")
    assert "Did you mean" in str(info.value)
    assert "'torchvision:resnet18'" in str(info.value).split("Available:")[0]
