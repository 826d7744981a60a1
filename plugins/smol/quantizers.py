"""SMOL's quantizers: precisions from trainable noise magnitudes (Savarese et al., 2022).

SMOL (Searching for Mixed-Precisions by Optimizing Limits for Perturbations)
gives every weight (or every group sharing a precision) a trainable ``s``. During
the search a weight is used as ``w + sigma(s) * eps`` with ``eps ~ U(-1, 1)``
drawn afresh each step; afterwards ``s`` maps to a precision
``p = 1 + floor(log2(1 + exp(-s)))`` (Eq. 2 with the floor of Sec. 4) and the
weight is quantized onto SMOL's grid of ``2**p`` values, the odd multiples of
``2**(1 - p)`` up to ``+-(2 - 2**(1 - p))``: ``+-1`` at 1 bit, ``+-0.5, +-1.5`` at
2 bits (Sec. 3.2). Its largest rounding error is ``2**(1 - p)``, which is
``sigma(s)`` at the ``s`` whose precision is exactly ``p``: the noise is the
perturbation the quantized weight may suffer. Zero-precision allocation (ZPA)
sets ``p = 0`` (the weight becomes 0: pruned) wherever that does not increase the
weight's rounding error.

- :class:`NoiseBits`: the ``s`` of one tensor, read as fractional widths
  ``1 + log2(1 + exp(-s))`` (differentiable) or integer precisions.
- :class:`SmolWeightQuantizer`: noisy weights while the search runs, SMOL's grid
  with straight-through gradients once its widths are frozen.
- :class:`SmolPACTQuantizer`: SMOL-A (Sec. 4.4): PACT-clipped inputs plus noise
  as wide as PACT's grid's worst rounding error at the precision ``s`` stands for
  (``(M / 2) * sigma / (2 - sigma)`` with ``M`` the clip's range; the paper's
  ``(M / 2) * sigma`` is twice that), then PACT at the learned precision.

While ``bits`` is a :class:`NoiseBits`, a quantizer in training mode adds noise
(drawn from its ``generator``) and in eval mode quantizes at the current integer
precisions. Replacing ``bits`` by :class:`~mpsearch.quant.bitwidth.FixedBits`
(:meth:`SmolWeightQuantizer.freeze`, or the engine's
:func:`~mpsearch.quant.modules.freeze_bits`, which applies no ZPA) ends the search.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.api import (MAX_BITS, BitWidth, Bits, FixedBits, MpsearchError, OddGrid, PACTQuantizer,
                          WidthQuantizer, bits_shape, fake_quant)

LN2 = math.log(2.0)
# s_init = -ln(2**(p - 1) - 1) lands log2(1 + e^-s) exactly on the integer p - 1,
# where float32 may fall a hair short (by 1e-6 at p = 14); floor() must not lose the bit.
FLOOR_TOLERANCE = 1e-4
MAX_P_INIT = 16


def initial_s(p_init: int) -> float:
    """``s_init = -ln(2**(p_init - 1) - 1)``, so that ``sigma(s_init) = 2**(1 - p_init)`` (Sec. 3.1).

    Raises:
        ValueError: ``p_init`` is below 2 (1 bit needs ``s = +inf``) or above 16.
    """
    if isinstance(p_init, bool) or int(p_init) != p_init or not 2 <= p_init <= MAX_P_INIT:
        raise ValueError(f"p_init must be an integer 2-{MAX_P_INIT}, not {p_init!r}")
    return -math.log(2.0 ** (int(p_init) - 1) - 1.0)


def fractional_precision(s: torch.Tensor) -> torch.Tensor:
    """``1 + log2(1 + exp(-s))``, differentiable (softplus keeps it finite for any ``s``)."""
    return 1.0 + F.softplus(-s) / LN2


def precision(s: torch.Tensor) -> torch.Tensor:
    """``p = 1 + floor(log2(1 + exp(-s)))`` as a float tensor on ``s``'s device, in 1-32."""
    with torch.no_grad():
        return (1.0 + torch.floor(F.softplus(-s) / LN2 + FLOOR_TOLERANCE)).clamp(1.0, MAX_BITS)


def smol_levels(p: int) -> torch.Tensor:
    """SMOL's ``2**p`` representable values at ``p >= 1`` bits, ascending."""
    if p < 1:
        raise ValueError("the grid needs at least one bit")
    step = 2.0 ** (1 - p)
    return torch.arange(-(2**p) + 1, 2**p, 2, dtype=torch.float64) * step


def smol_quantize(u: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
    """The grid value nearest to ``u`` at precision ``p`` (broadcast onto ``u``); 0 where ``p = 0``.

    The levels are the centres of the cells ``[k d, (k + 1) d)`` with ``d = 2**(2 - p)``,
    clamped to the outermost level ``2 - d / 2``.
    """
    p = torch.as_tensor(p, dtype=u.dtype, device=u.device)
    step = torch.exp2(2.0 - p)
    top = 2.0 - step / 2
    q = torch.clamp((torch.floor(u / step) + 0.5) * step, -top, top)
    return torch.where(p > 0, q, torch.zeros_like(q))


def zero_precision(u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """ZPA (Sec. 3.2): ``p`` with 0 wherever ``|u| <= |u - q(u, p)|`` (elementwise, ``u``'s shape)."""
    p = torch.as_tensor(p, dtype=u.dtype, device=u.device).expand_as(u)
    return torch.where(u.abs() <= (u - smol_quantize(u, p)).abs(), torch.zeros_like(p), p)


def uniform_noise(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """``eps ~ U(-1, 1)`` of ``shape``, from ``generator`` (whose device must be ``device``)."""
    return torch.rand(shape, generator=generator, device=device, dtype=dtype).mul_(2.0).sub_(1.0)


class NoiseBits(BitWidth):
    """The trainable noise parameters ``s`` of one tensor, read as widths.

    ``forward()`` is the fractional width ``1 + log2(1 + exp(-s))`` (what a
    differentiable cost takes), :meth:`discrete` the precision
    ``1 + floor(log2(1 + exp(-s)))``. ``s`` has the bits shape of the granularity
    (``()`` for one precision per layer, SMOL-L).
    """

    fractional = True

    def __init__(self, p_init: int = 8, shape: tuple[int, ...] = ()):
        super().__init__()
        self.p_init = int(p_init)
        self.s = nn.Parameter(torch.full(tuple(shape), initial_s(p_init)))

    def sigma(self) -> torch.Tensor:
        """The noise magnitude (perturbation limit) ``sigma(s)``."""
        return torch.sigmoid(self.s)

    def forward(self) -> torch.Tensor:
        return fractional_precision(self.s).clamp(max=MAX_BITS)

    def penalty(self) -> torch.Tensor:
        """``log2(1 + exp(-s))`` elementwise: the paper's cost term before the L1 sum."""
        return F.softplus(-self.s) / LN2

    def precision(self) -> torch.Tensor:
        """The integer precisions as a float tensor on ``s``'s device (no host sync)."""
        return precision(self.s)

    def discrete(self) -> Bits:
        p = self.precision().cpu().to(torch.int64)
        return int(p) if p.dim() == 0 else p

    def extra_repr(self) -> str:
        return f"shape={tuple(self.s.shape)}, p_init={self.p_init}"


class SmolWeightQuantizer(WidthQuantizer):
    """SMOL's weight quantizer: noisy weights during the search, its grid afterwards.

    The grid lives on ``[-2, 2]``; a layer's weights are mapped onto it by a
    per-layer ``scale`` fixed when the quantizer is made: the layer's largest
    initial weight lands on the largest ``p_init``-bit level ``2 - 2**(1 - p_init)``,
    which is also where the search's clip ``+-(2 - sigma(s))`` starts. The scale is
    stored as one float32 (``scale_bits`` = 32). The weight parameter itself stays in
    the layer's own units, so the weights' optimizer and learning rate are those of
    the float model.

    Args:
        weight: the layer's weight, to size ``s`` and fix the scale.
        granularity: which weights share one ``s`` (``"parameter"``: SMOL;
            ``"layer"``: SMOL-L; any granularity of :func:`bits_shape`).
        p_init: the initial precision.
    """

    def __init__(self, weight: torch.Tensor, granularity: str = "parameter", p_init: int = 8):
        super().__init__(NoiseBits(p_init, bits_shape(granularity, tuple(weight.shape))))
        top = 2.0 - 2.0 ** (1 - int(p_init))
        scale = (weight.detach().abs().max() / top).clamp_min(torch.finfo(torch.float32).tiny)
        self.register_buffer("scale", scale.to(torch.float32))
        self.generator: torch.Generator | None = None  # the search's noise; not module state

    @property
    def searching(self) -> bool:
        return isinstance(self.bits, NoiseBits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.searching and self.training:
            eps = uniform_noise(w.shape, self.generator, w.device, w.dtype)
            return w + (self.scale * self.bits.sigma()) * eps
        p = self.bits.precision() if self.searching else self.bits()
        q = self.scale * smol_quantize(w.detach() / self.scale, p)
        # straight through: dL/dw = dL/dw_q (Algorithm 1, line 13); w - w is exactly 0, so the
        # value is q itself, bit for bit, as the integer form says
        return q + (w - w.detach())

    def integer_form(self, w: torch.Tensor) -> OddGrid:
        """SMOL's odd grid with the layer's scale; widths per weight where ZPA or the granularity says."""
        if self.searching and self.training:
            raise MpsearchError("a SMOL weight quantizer that is still searching adds noise in training "
                                "mode; call eval() or freeze it before taking its integer form.")
        p = (self.bits.precision() if self.searching else self.bits()).detach()
        u = w.detach() / self.scale
        j = torch.floor(u / torch.exp2(2.0 - p))
        half = torch.exp2(p - 1.0)
        j = torch.where(p > 0, torch.minimum(torch.maximum(j, -half), half - 1.0), torch.zeros_like(j))
        return OddGrid(bits=torch.as_tensor(self.integer_bits()).to(torch.int64).cpu(),
                       codes=j.to(torch.int64).cpu(), scale=self.scale.detach().cpu())

    def clip_(self, w: torch.Tensor) -> None:
        """Clip ``w`` in place to ``+-scale * (2 - sigma(s))`` (Algorithm 1, line 7)."""
        with torch.no_grad():
            bound = self.scale * (2.0 - self.bits.sigma())
            w.copy_(torch.minimum(torch.maximum(w, -bound), bound))

    def frozen_bits(self, w: torch.Tensor, zpa: bool) -> Bits:
        """The precisions the search settled on, with zero-precision allocation if ``zpa``.

        With ZPA the result is per weight (whatever the granularity), since pruning
        depends on each weight's value.
        """
        p = self.bits.precision() if self.searching else self.bits().to(w.device)
        if zpa:
            p = zero_precision(w.detach() / self.scale, p)
        p = p.cpu().to(torch.int64)
        return int(p) if p.dim() == 0 else p

    def freeze(self, w: torch.Tensor, zpa: bool = False) -> None:
        """End the search: fix the precisions (ZPA applied to ``w`` if asked)."""
        self.bits = FixedBits(self.frozen_bits(w, zpa)).to(self.scale.device)

    def scale_bits(self) -> int:
        return 32

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}"


class SmolPACTQuantizer(PACTQuantizer):
    """SMOL-A: PACT-clipped inputs with noise of a trained magnitude, then PACT at the learned width.

    While searching, training steps compute ``clip(x) + (M / 2) * sigma / (2 - sigma) * eps``
    (:meth:`half_width`), where ``clip`` is PACT's ``[0, alpha]`` (``M = alpha``) or, for
    signed inputs, ``[-alpha, alpha]`` (``M = 2 alpha``); ``alpha`` is trained through
    both terms. The paper's ``(M / 2) * sigma`` is twice the worst rounding error of the
    PACT grid deployed at the precision ``sigma`` stands for (``M / 2**(p+1)`` against
    ``M / 2**p``), which made the learned input precisions about a bit wider than needed;
    the half-width here equals that error at every integer precision (and the paper's at 1 bit).
    Evaluation, and everything after :func:`freeze_bits`, is :class:`PACTQuantizer`
    at the integer precision. One ``s`` per input tensor (see the strategy's
    deviations); ``alpha`` is calibrated on the first training batch as PACTQuantizer does.
    """

    def __init__(self, p_init: int = 8, two_sided: bool = False, alpha: float | None = None):
        super().__init__(NoiseBits(p_init), alpha=alpha, two_sided=two_sided)
        self.generator: torch.Generator | None = None

    def _form_bits(self) -> torch.Tensor:
        if not self.searching:
            return super()._form_bits()
        if self.training:
            raise MpsearchError("a SMOL-A quantizer that is still searching adds noise in training mode; "
                                "call eval() or freeze its widths before taking its integer form.")
        return self.bits.precision().detach()

    @property
    def searching(self) -> bool:
        return isinstance(self.bits, NoiseBits)

    def half_width(self, a: torch.Tensor) -> torch.Tensor:
        """The noise's half-width ``(M / 2) * sigma / (2 - sigma)`` for the clip ``a``.

        At the ``s`` of an integer precision ``p`` (``sigma = 2**(1 - p)``) this is
        ``M / (2 (2**p - 1))``, the largest rounding error of PACT's ``2**p`` levels
        over the range ``M``: the perturbation the deployed activation may suffer, as
        ``sigma`` is for the weights on SMOL's grid.
        """
        sigma = self.bits.sigma()
        full_range = 2 * a if self.two_sided else a
        return full_range / 2 * sigma / (2 - sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.searching:
            return super().forward(x)
        a = self.clip(x)
        if self.training:
            low = -a if self.two_sided else torch.zeros_like(a)
            clipped = torch.minimum(torch.maximum(x, low), a)
            eps = uniform_noise(x.shape, self.generator, x.device, x.dtype)
            return clipped + self.half_width(a) * eps
        p = self.bits.precision()
        if self.two_sided:
            return fake_quant(x, p, -a, 2 * a, -a, 2 * a, fractional=False)
        zero = torch.zeros_like(a)
        return fake_quant(x, p, zero, a, zero, a, fractional=False)


def smol_quantizers(model: nn.Module) -> list[SmolWeightQuantizer | SmolPACTQuantizer]:
    """Every SMOL quantizer under ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, (SmolWeightQuantizer, SmolPACTQuantizer))]


def noise_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``s`` of the quantizers still searching (for their own Adam)."""
    return [m.s for m in model.modules() if isinstance(m, NoiseBits)]


__all__ = ["NoiseBits", "SmolPACTQuantizer", "SmolWeightQuantizer", "fractional_precision",
           "initial_s", "noise_parameters", "precision", "smol_levels", "smol_quantize",
           "smol_quantizers", "uniform_noise", "zero_precision"]
