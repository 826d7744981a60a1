"""Every quantizer's integer form: exact, at its widths, and intact after packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.errors import MpsearchError
from mpsearch.plugins.adapt.fixedpoint import FixedPoint, FixedPointQuantizer
from mpsearch.plugins.alq.quantizers import (ALQWeightQuantizer, Grouping, MultiBitActivationQuantizer,
                                             choose_grouping)
from mpsearch.plugins.smol.quantizers import SmolPACTQuantizer, SmolWeightQuantizer
from mpsearch.quant import DoReFaQuantizer, FixedBits, LearnableBits, MinMaxQuantizer, PACTQuantizer
from mpsearch.quant.integer import (AffineGrid, LevelsGrid, OddGrid, Packed, UniformGrid, pack_bits, unpack_bits)
from mpsearch.testing.quantizers import check_integer_form, round_trip

WIDTHS = [1, 2, 3, 5, 8, 16]


def weights(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2


def inputs(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 1.5


@pytest.mark.parametrize("n", WIDTHS)
def test_uniform_quantizers_dequantize_exactly(n):
    w, x = weights(16, 8, 3, 3), inputs(4, 8, 5, 5)
    form = check_integer_form(MinMaxQuantizer(FixedBits(n)), w)
    assert form.grid == "uniform" and form.dynamic
    assert int(form.codes.min()) == 0 and int(form.codes.max()) == 2**n - 1  # both extremes are on the grid
    check_integer_form(MinMaxQuantizer(FixedBits(n)), x, role="input")
    check_integer_form(DoReFaQuantizer(FixedBits(n)), w)
    check_integer_form(DoReFaQuantizer(FixedBits(n), rescale=False), w)
    check_integer_form(PACTQuantizer(FixedBits(n), alpha=1.3), x.relu(), role="input")
    check_integer_form(PACTQuantizer(FixedBits(n), alpha=1.3, two_sided=True), x, role="input")


@pytest.mark.parametrize("shape", [(16, 1, 1, 1), (16, 8, 1, 1), (16, 1, 3, 3), (16, 8, 3, 3)],
                         ids=["channel", "kernel", "pixel", "parameter"])
def test_widths_per_group_with_pruned_groups(shape):
    bits = torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(2))
    bits.view(-1)[0] = 0
    w = weights(16, 8, 3, 3)
    for q in (MinMaxQuantizer(FixedBits(bits)), DoReFaQuantizer(FixedBits(bits))):
        form = check_integer_form(q, w)
        pruned = torch.broadcast_to(bits, w.shape) == 0
        assert (form.dequantize()[pruned] == 0).all() and (form.codes[pruned] == 0).all()


def test_learned_widths_have_no_integer_form_until_frozen():
    q = MinMaxQuantizer(LearnableBits(4.3))
    with pytest.raises(MpsearchError, match="still being learned; freeze them"):
        q.integer_form(weights(4, 4))


@pytest.mark.parametrize("granularity,p_init", [("parameter", 8), ("layer", 4), ("channel", 3)])
def test_smol_weights_on_the_odd_grid(granularity, p_init):
    w = weights(16, 8, 3, 3)
    q = SmolWeightQuantizer(w, granularity, p_init)
    q.eval()
    form = check_integer_form(q, w)  # still searching: its current precisions
    q.freeze(w, zpa=True)
    form = check_integer_form(q, w)
    assert isinstance(form, OddGrid)
    # the values are odd multiples of 2**(1 - p), scaled
    b = torch.broadcast_to(form.bits, w.shape)
    unit = form.dequantize() / float(q.scale) / torch.exp2(1.0 - b.float())
    used = b > 0
    assert torch.allclose(unit[used], unit[used].round(), atol=1e-4)
    assert bool((unit[used].round() % 2 != 0).all())
    if granularity == "parameter":
        assert bool((form.bits == 0).any())  # ZPA pruned some weights


def test_a_smol_quantizer_searching_in_training_mode_has_no_form():
    w = weights(8, 4)
    with pytest.raises(MpsearchError, match="adds noise in training mode"):
        SmolWeightQuantizer(w).integer_form(w)
    with pytest.raises(MpsearchError, match="adds noise in training mode"):
        SmolPACTQuantizer(4).integer_form(inputs(2, 4))


@pytest.mark.parametrize("two_sided", [False, True])
def test_smol_pact_inputs(two_sided):
    x = inputs(4, 8, 5, 5)
    q = SmolPACTQuantizer(5, two_sided=two_sided, alpha=1.2)
    q.eval()
    check_integer_form(q, x if two_sided else x.relu(), role="input")


@pytest.mark.parametrize("structure", ["pixel", "kernel", "channel", "subchannel"])
def test_alq_bases_with_removed_coordinates(structure):
    w = weights(500, 800) if structure == "subchannel" else weights(16, 8, 3, 3)
    grouping = choose_grouping(w.shape) if structure == "subchannel" else Grouping(structure)
    q = ALQWeightQuantizer(w, grouping, 3)
    q.remove(torch.arange(1, q.mask.numel(), 4))  # coordinates left out in the middle of a group's slots
    q.remove(torch.arange(0, 3 * 5, 1))  # whole groups removed: width 0
    form = check_integer_form(q, w)
    assert form.grid == "binary"
    assert bool((form.bits == 0).any()) and int(form.bits.max()) == 3


def test_alq_storage_is_eq26_with_the_slot_mask():
    """Bases at 1 bit, 32-bit coordinates per used slot, and which slots each group uses."""
    w = weights(32, 64)
    q = ALQWeightQuantizer(w, Grouping("channel"), 2)
    q.remove(torch.tensor([1, 4, 6]))
    used = int(q.mask.sum())
    form = check_integer_form(q, w)
    assert form.storage_bits() == used * 64 + 32 * used + 32 * 2
    # Eq. 26 keeps a width per group instead of the mask: the same at i_max = 2
    assert form.storage_bits() == q.storage_bits()


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_alq_multi_bit_inputs(bits):
    x = inputs(8, 6, 5, 5)
    q = MultiBitActivationQuantizer(bits)
    q.train()
    q(x)  # calibrates the levels
    form = check_integer_form(q, x, role="input")
    assert isinstance(form, LevelsGrid) and form.levels.numel() == 2**bits


@pytest.mark.parametrize("fmt", [FixedPoint(4, 3), FixedPoint(8, 6), FixedPoint(16, 12)])
@pytest.mark.parametrize("sparse", [True, False])
def test_adapt_fixed_point(fmt, sparse):
    w = weights(16, 8, 3, 3)
    q = FixedPointQuantizer(fmt, sparse)
    q.generator = torch.Generator().manual_seed(0)
    with pytest.raises(MpsearchError, match="no stored quantized copy"):
        q.integer_form(w)
    q.requantize(w)
    form = check_integer_form(q, w)
    assert isinstance(form, AffineGrid) and form.scale == 2.0**-fmt.fl
    assert int(form.codes.min()) >= -(2 ** (fmt.wl - 1)) and int(form.codes.max()) < 2 ** (fmt.wl - 1)


def test_straight_through_gradients_are_unchanged():
    """The forward value is the grid value bit for bit; the gradient still passes straight through."""
    w = weights(8, 4, 3, 3).requires_grad_(True)
    q = SmolWeightQuantizer(w.detach(), "layer", 4)
    q.freeze(w.detach())
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    x = inputs(4, 6).requires_grad_(True)
    m = MultiBitActivationQuantizer(2)
    m(x.detach())
    m.eval()
    out = m(x)
    values = m.levels()[0]
    out.sum().backward()
    inside = (x >= values[0]) & (x <= values[-1])
    assert torch.equal(x.grad, inside.float())


def test_a_third_party_quantizer_passes_with_an_affine_form():
    from mpsearch.quant.quantizers import Quantizer

    class Symmetric(Quantizer):
        """Symmetric integers with a scale per output channel (none of mpsearch's quantizers)."""

        def __init__(self, bits):
            super().__init__()
            self.bits = bits

        def _scale(self, w):
            return w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / (2 ** (self.bits - 1) - 1)

        def forward(self, w):
            s = self._scale(w)
            q = torch.clamp(torch.round(w / s), -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1)
            return (q * s).detach() + (w - w.detach())

        def integer_bits(self):
            return self.bits

        def integer_form(self, w):
            return AffineGrid(bits=torch.tensor(self.bits), scale=self._scale(w)).encode(w)

    form = check_integer_form(Symmetric(6), weights(16, 8, 3, 3))
    assert form.codes.abs().max() == 31


def test_a_quantizer_without_an_integer_form_says_so():
    from mpsearch.quant.quantizers import Quantizer

    class Opaque(Quantizer):
        def forward(self, x):
            return x.round()

        def integer_bits(self):
            return 8

    with pytest.raises(MpsearchError, match="quantizer Opaque has no integer form"):
        Opaque().integer_form(torch.zeros(3))


def test_a_wrong_form_fails_the_check():
    """The check is not vacuous: a form one level off, or wider than its widths, is caught."""
    q = MinMaxQuantizer(FixedBits(3))
    real = q.integer_form
    w = weights(8, 8)
    q.integer_form = lambda x: UniformGrid(**{**real(x).__dict__, "codes": real(x).codes.clamp(max=6)})
    with pytest.raises(AssertionError, match="values differ"):
        check_integer_form(q, w)
    form = real(w)
    wide = UniformGrid(**{**form.__dict__, "bits": torch.tensor(2)})
    with pytest.raises(AssertionError, match="wider than their widths"):
        round_trip(wide)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_bit_streams_round_trip_at_mixed_widths(seed, chunk, monkeypatch):
    import mpsearch.quant.integer as integer

    monkeypatch.setattr(integer, "CHUNK", chunk)  # also across the steps a large tensor is packed in
    g = np.random.default_rng(seed)
    widths = g.integers(0, 33, 1000)
    values = (g.integers(0, 2**32, 1000, dtype=np.uint64) & ((np.uint64(1) << widths.astype(np.uint64))
                                                             - np.uint64(1)))
    data = pack_bits(Packed(values, widths))
    assert len(data) == (int(widths.sum()) + 7) // 8
    assert np.array_equal(unpack_bits(data, widths, 1000), values)
    same = values & np.uint64(0x1F)  # one width for all: the fast path
    data = pack_bits(Packed(same, 5))
    assert len(data) == (5000 + 7) // 8 and np.array_equal(unpack_bits(data, 5, 1000), same)
