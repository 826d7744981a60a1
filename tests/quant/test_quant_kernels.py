"""The fake-quantization kernels: eager against compiled, CPU against CUDA, and bf16 autocast.

Tests marked ``gpu`` (a parameter, or a whole test) skip where torch sees no CUDA device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.quant import (DoReFaQuantizer, FixedBits, LearnableBits, MinMaxQuantizer, PACTQuantizer,
                            quantize_model, set_compile)
from mpsearch.quant.functional import use_compiled
from mpsearch.training import autocast, set_autocast

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)

# (name, quantizer factory): every path of the kernels, fractional, integer, per channel, pruned.
QUANTIZERS = [
    ("minmax-fractional", lambda: MinMaxQuantizer(LearnableBits(3.4))),
    ("minmax-fractional-per-channel", lambda: MinMaxQuantizer(LearnableBits(3.4, (8, 1, 1, 1)))),
    ("minmax-pruned-channels", lambda: MinMaxQuantizer(FixedBits(torch.tensor([0, 2, 3, 4, 0, 8, 1, 5])
                                                                 .view(8, 1, 1, 1)))),
    ("dorefa-fractional", lambda: DoReFaQuantizer(LearnableBits(2.6))),
    ("pact-fixed", lambda: PACTQuantizer(FixedBits(3), alpha=1.2)),
    ("pact-fractional-two-sided", lambda: PACTQuantizer(LearnableBits(4.3), alpha=0.9, two_sided=True)),
]


def run(make, x: torch.Tensor, compiled: bool):
    """Output and every gradient (input, width, clip) of one forward and backward."""
    set_compile("on" if compiled else "off")
    try:
        torch.manual_seed(0)
        q = make().to(x.device)
        xi = x.detach().clone().requires_grad_()
        out = q(xi)
        out.backward(torch.linspace(-1, 1, out.numel(), device=x.device).view_as(out))
        grads = [p.grad.detach().cpu() for p in q.parameters() if p.grad is not None]
        return [out.detach().cpu(), xi.grad.cpu(), *grads]
    finally:
        set_compile("off")


@pytest.mark.slow
@pytest.mark.parametrize("name,make", QUANTIZERS, ids=[q[0] for q in QUANTIZERS])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_compiled_kernels_equal_eager(device, name, make):
    x = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(1)).to(device) * 1.5
    eager, compiled = run(make, x, False), run(make, x, True)
    assert len(eager) == len(compiled) >= 2
    for a, b in zip(eager, compiled):
        # Equal but for a value that sits on a rounding tie in one and not the other.
        close = torch.isclose(a, b, atol=1e-5, rtol=1e-5)
        assert close.float().mean() > 0.99 and torch.allclose(a.sum(), b.sum(), rtol=2e-2, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name,make", QUANTIZERS, ids=[q[0] for q in QUANTIZERS])
def test_cuda_eager_kernels_equal_the_cpu_ones(name, make):
    x = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    for a, b in zip(run(make, x, False), run(make, x.cuda(), False)):
        assert torch.isclose(a, b, atol=1e-5, rtol=1e-5).float().mean() > 0.99


@pytest.mark.gpu
def test_cuda_compiles_by_default():
    set_compile("auto")
    try:
        assert use_compiled("cuda") and not use_compiled("cpu")
    finally:
        set_compile("off")


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bf16_autocast_trains_a_quantized_resnet20(device):
    """Under bf16 autocast the convolutions run in bf16, fake quantization in float32 inside
    (its grid is exact), and the step updates weights, widths and clips."""
    spec = PluginHost(entry_points=False).models.get("resnet20")
    model = spec.create(seed=0)
    quantize_model(model, model_profile(spec),
                   lambda l: DoReFaQuantizer(LearnableBits(4.5, min_bits=2, max_bits=8)),
                   lambda l: PACTQuantizer(LearnableBits(4.5, min_bits=2, max_bits=8),
                                           two_sided=l.input_signed))
    model.to(device)
    seen = []
    model.layer1[0].conv2.input_quantizer.register_forward_hook(
        lambda m, args, out: seen.append((args[0].detach(), out.detach())))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.arange(8, device=device) % 10
    set_autocast("bf16")
    try:
        with autocast(torch.device(device)):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
    finally:
        set_autocast("auto")
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    widths = [p for n, p in model.named_parameters() if n.endswith("bits.value")]
    assert widths and any(float(p.grad.abs()) > 0 for p in widths)
    (x_in, out), = seen
    assert x_in.dtype == out.dtype == torch.bfloat16
    q = model.layer1[0].conv2.input_quantizer
    with torch.no_grad():  # the same grid as in float32, rounded once to bf16
        reference = q(x_in.float()).to(torch.bfloat16)
    assert torch.equal(out, reference)
