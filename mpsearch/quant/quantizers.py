"""Quantizers: modules that fake-quantize one tensor (a layer's weights or its input).

:class:`Quantizer` is the interface every quantizer implements, including those
later strategies bring (SMOL's odd grid, AdaPT's fixed point with stochastic
rounding, ALQ's binary bases): ``forward`` returns the fake-quantized tensor,
:meth:`Quantizer.integer_bits` the widths an integer deployment would use now,
:meth:`Quantizer.scale_bits` the storage its own parameters need, and
:meth:`Quantizer.integer_form` the output as integer codes on a grid (what export
writes; see :mod:`mpsearch.quant.integer`).

The three quantizers here take their widths from a :class:`BitWidth` and use the
shared uniform-grid kernel of :mod:`mpsearch.quant.functional`, with integer
widths (fixed) or fractional ones (learnable, interpolated).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import replace

import torch
from torch import nn

from mpsearch.assignment import Bits
from mpsearch.errors import MpsearchError
from mpsearch.quant.bitwidth import BitWidth, FixedBits
from mpsearch.quant.functional import fake_quant
from mpsearch.quant.integer import IntegerForm, UniformGrid


class Quantizer(nn.Module, ABC):
    """Fake-quantizes one tensor. Runs inside the training step: no host syncs."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def integer_bits(self) -> Bits:
        """The widths (0-32, int or integer tensor) an integer deployment would use now."""

    def scale_bits(self) -> int:
        """Bits this quantizer stores besides the quantized values (scales, offsets)."""
        return 0

    def widths(self) -> torch.Tensor:
        """The current widths as a float tensor, differentiable where they are learned.

        Gradient strategies put these into a cost objective's differentiable form.
        The default is the integer widths, a constant.
        """
        return torch.as_tensor(self.integer_bits(), dtype=torch.float32)

    def set_bits(self, bits: Bits) -> None:
        """Run at these integer widths from now on, frozen (the host's legalisation).

        ``bits`` are the backend's legal widths for this tensor, never below
        :meth:`integer_bits`. A quantizer whose widths are not a :class:`BitWidth`
        (fixed point, binary bases) overrides this to widen its own format.

        Raises:
            NotImplementedError: the quantizer cannot change its widths, and ``bits``
                differ from its own.
        """
        if torch.equal(torch.as_tensor(bits), torch.as_tensor(self.integer_bits())):
            return
        raise NotImplementedError(f"{type(self).__name__} cannot change its widths to {bits!r}")

    def calibrate(self, x: torch.Tensor) -> None:
        """Set ranges from a calibration sample of the tensor (post-training quantization).

        ``x`` holds inputs of several batches. Quantizers whose ranges are dynamic
        (min-max) or come from the weights themselves need nothing: the default does nothing.
        """

    def integer_form(self, x: torch.Tensor) -> IntegerForm:
        """The integer form of ``forward(x)`` in eval mode: codes, widths and grid.

        Its :meth:`~mpsearch.quant.integer.IntegerForm.dequantize` must equal
        ``forward(x)`` bit for bit (:func:`mpsearch.testing.quantizers.check_integer_form`
        checks it); export writes nothing else, so a quantizer that implements this
        exports without changes to mpsearch. For an input quantizer, the form's
        :meth:`~mpsearch.quant.integer.IntegerForm.template` must encode any input as
        ``forward`` does.

        Raises:
            MpsearchError: the quantizer has no integer form, or none yet (its widths
                are still being learned).
        """
        raise MpsearchError(f"quantizer {type(self).__name__} has no integer form; implement "
                            f"Quantizer.integer_form to export a model that uses it.")


class WidthQuantizer(Quantizer):
    """A quantizer whose widths come from a :class:`BitWidth` module."""

    def __init__(self, bits: BitWidth):
        super().__init__()
        self.bits = bits

    def integer_bits(self) -> Bits:
        return self.bits.discrete()

    def widths(self) -> torch.Tensor:
        return self.bits()

    def set_bits(self, bits: Bits) -> None:
        self.bits = FixedBits(bits).to(self.bits().device)

    def _form_bits(self) -> torch.Tensor:
        """The float widths ``forward`` uses in eval mode (integer-valued)."""
        if self.bits.fractional:
            raise MpsearchError(f"{type(self).__name__}'s widths are still being learned; freeze them "
                                f"(mpsearch.quant.freeze_bits) before taking its integer form.")
        return self.bits().detach()

    def _quantize(self, x, lo, scale, out_lo, out_scale, **kw) -> torch.Tensor:
        fixed = isinstance(self.bits, FixedBits)
        return fake_quant(x, self.bits(), lo, scale, out_lo, out_scale,
                          fractional=self.bits.fractional,
                          pruning=fixed and self.bits.pruning, **kw)


class MinMaxQuantizer(WidthQuantizer):
    """Uniform quantization between the tensor's minimum and maximum (BitPruning, Sec. II-A).

    ``Q(V, n) = L_min + round((V - L_min) / S) * S`` with ``S = (L_max - L_min) / (2**n - 1)``,
    where ``L_min``/``L_max`` are the tensor's extremes (for activations: of the
    batch). The extremes are treated as constants and rounding passes gradients
    straight through. Stores ``L_min`` and ``L_max`` as float32 (64 bits).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(x.detach())
        scale = (hi - lo).clamp_min_(torch.finfo(x.dtype).tiny)
        # The range is the tensor's own: nothing to clip, and the gradient is g.
        return self._quantize(x, lo, scale, lo, scale, bounded=True)

    def integer_form(self, x: torch.Tensor) -> UniformGrid:
        """Offset ``L_min`` and span ``L_max - L_min`` of ``x`` itself (dynamic: per batch for inputs)."""
        x = x.detach()
        lo, hi = torch.aminmax(x)
        scale = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
        return UniformGrid.from_input(x, self._form_bits(), lo, scale, offset=lo, span=scale, dynamic=True,
                                      integer_bits=self.integer_bits())

    def scale_bits(self) -> int:
        return 64


class DoReFaQuantizer(WidthQuantizer):
    """DoReFa weight quantization (Zhou et al. 2016), as FracBits uses it.

    ``W~ = tanh(W) / (2 max|tanh(W)|) + 1/2`` and ``Q_W = 2 q_n(W~) - 1`` with
    ``q_n(x) = round((2**n - 1) x) / (2**n - 1)``. The maxima are treated as
    constants.

    Deviation: DoReFa's ``Q_W`` lies in ``[-1, 1]`` whatever the layer's weight
    scale, which only batch normalisation after the layer absorbs; a network
    without it (LeNet-5) then does not train. So ``Q_W`` is rescaled to the mean
    magnitude of the float weights, ``Q_W * mean|W| / mean|Q_W|`` (the scale is a
    constant for the gradient; at 1 bit it is XNOR-Net's optimal binary scale,
    and SAT, which FracBits builds on, rescales quantized weights for the same
    reason). Scaling to ``max|W|`` instead blows low widths up: most weights land
    on the first non-zero level, far above their own size. One float32 is stored
    per tensor. ``rescale=False`` gives the paper's plain form.
    """

    def __init__(self, bits, rescale: bool = True):
        super().__init__(bits)
        self.rescale = bool(rescale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w)
        tiny = torch.finfo(w.dtype).tiny
        m = t.detach().abs().amax().clamp_min_(tiny)
        q = self._quantize(t, -m, 2 * m, -1.0, 2.0, bounded=True)  # |tanh(w)| <= m
        if not self.rescale:
            return q
        with torch.no_grad():  # mean|W| / mean|Q_W|: the element counts cancel
            scale = w.abs().sum().div_(q.abs().sum().clamp_min_(tiny))
        return q * scale

    def integer_form(self, w: torch.Tensor) -> UniformGrid:
        """Codes of ``tanh(w)`` on ``[-1, 1]`` (offset -1, span 2) and the rescale as gain."""
        t = torch.tanh(w.detach())
        m = t.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
        form = UniformGrid.from_input(t, self._form_bits(), -m, 2 * m, offset=-1.0, span=2.0,
                                      integer_bits=self.integer_bits())
        if not self.rescale:
            return form
        q = form.dequantize().to(w.device)
        gain = w.detach().abs().mean() / q.abs().mean().clamp_min(torch.finfo(w.dtype).tiny)
        return replace(form, gain=gain.cpu())

    def scale_bits(self) -> int:
        return 32 if self.rescale else 0

    def extra_repr(self) -> str:
        return f"rescale={self.rescale}"


class PACTQuantizer(WidthQuantizer):
    """PACT activation quantization (Choi et al. 2018) with a learnable clip ``alpha``.

    ``y = clip(x, 0, alpha)``, ``Q = alpha * q_n(y / alpha)``; the gradient with
    respect to ``alpha`` is PACT's: 1 where ``x >= alpha``, 0 elsewhere. With
    ``two_sided`` the clip is ``[-alpha, alpha]`` (for inputs no ReLU precedes, as
    FracBits does for MobileNetV2) and ``x <= -alpha`` contributes -1.

    Deviation: with ``alpha=None`` (the default) the clip starts at the largest
    magnitude of the first training batch instead of PACT's constant 10. With a
    constant far above the activations, every value of a low-width layer rounds
    to 0, nothing reaches the clip, and neither the network nor ``alpha`` gets a
    gradient (LeNet-5 at 2 bits stays at chance).
    """

    def __init__(self, bits: BitWidth, alpha: float | None = None, two_sided: bool = False):
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(1.0 if alpha is None else float(alpha)))
        self.register_buffer("calibrated", torch.tensor(alpha is not None))
        self._calibrated = alpha is not None  # mirrors the buffer without a device sync
        self.two_sided = bool(two_sided)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.calibrated)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """The clip |alpha| (floored at 1e-4), set to the first training batch's maximum |x|."""
        if not self._calibrated and self.training:
            with torch.no_grad():
                self.alpha.copy_(x.detach().abs().max().clamp_min(1e-3))
                self.calibrated.fill_(True)
            self._calibrated = True
        return self.alpha.abs().clamp_min(1e-4)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set ``alpha`` to the clip that minimises the squared quantization error on ``x``.

        Candidates are fractions of the largest magnitude (a grid of 40 from 5 % to
        100 %), quantized at the current integer widths; at 8 bits this lands near
        the maximum, at 2-4 bits well inside it, where clipping a few outliers buys
        resolution for the rest.
        """
        x = x.detach().float().flatten()
        if not x.numel():
            return
        top = float(x.abs().max().clamp_min(1e-3))
        bits = torch.as_tensor(self.integer_bits(), dtype=torch.float32, device=x.device)
        best, best_error = top, math.inf
        for fraction in torch.linspace(0.05, 1.0, 40).tolist():
            a = torch.tensor(top * fraction, device=x.device)
            low = -a if self.two_sided else torch.zeros_like(a)
            q = fake_quant(x, bits.max(), low, a - low, low, a - low, fractional=False)
            error = float((q - x).square().mean())
            if error < best_error:
                best, best_error = top * fraction, error
        self.alpha.copy_(torch.tensor(best))
        self.calibrated.fill_(True)
        self._calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.clip(x)
        if self.two_sided:
            lo, span = -a, 2 * a
            return self._quantize(x, lo, span, lo, span, alpha=self.alpha, two_sided=True)
        zero = torch.zeros_like(a)
        return self._quantize(x, zero, a, zero, a, alpha=self.alpha)

    def integer_form(self, x: torch.Tensor) -> UniformGrid:
        """Offset 0 and span ``alpha`` (two-sided: offset ``-alpha``, span ``2 alpha``)."""
        x = x.detach()
        a = self.alpha.detach().abs().clamp_min(1e-4).to(x.dtype)
        offset, span = (-a, 2 * a) if self.two_sided else (0.0, a)
        return UniformGrid.from_input(x, self._form_bits(), offset, span, offset=offset, span=span,
                                      integer_bits=self.integer_bits())

    def extra_repr(self) -> str:
        return f"two_sided={self.two_sided}"
