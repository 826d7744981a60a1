"""HAQ's linear quantizer: a clip chosen from data, then a uniform grid with zero on it."""

from __future__ import annotations

import torch
from torch import nn

from mpsearch.assignment import MAX_BITS, Bits
from mpsearch.quant.bitwidth import BitWidth, FixedBits
from mpsearch.quant.calibration import CALIBRATIONS, choose_clip, grid_levels
from mpsearch.quant.quantizers import WidthQuantizer


class LinearQuantizer(WidthQuantizer):
    """Linear quantization with a calibrated clip (HAQ, Wang et al., CVPR 2019, Sec. 3.3).

    Signed tensors (weights, inputs no ReLU precedes): ``round(clamp(x, -c, c) / s) * s``
    with ``s = c / (2^(b-1) - 1)``; non-negative ones: ``clamp(x, 0, c)`` with
    ``s = c / (2^b - 1)`` (:func:`~mpsearch.quant.calibration.grid_levels`). Rounding
    passes gradients straight through inside the clip; ``c`` gets PACT's gradient
    (1 above it, -1 below ``-c``) when ``learn_clip``, which HAQ's code does for
    activations and not for weights. Widths are integers (fixed); 32 bits passes
    the tensor through unquantized.

    The clip is chosen by :meth:`calibrate` (``calibration``: ``"mse"``, the least
    squared error, or ``"kl"``, HAQ's KL divergence). Deviation: the default is
    the squared error, because KL clips collapse low-width activations whose
    distribution has a spike away from zero (MNIST's normalised background: 2-bit
    activations of LeNet-5 with 8-bit weights fell to chance, 0.100 against 0.968
    by squared error; ``python benchmarks/rl_search.py`` prints the comparison).
    Until then the quantizer passes its input
    through unchanged, so a calibration pass over a freshly quantized model sees
    the float network's activations, as HAQ's calibration and TensorRT's do; a
    quantizer used in training before any calibration clips at the largest
    magnitude of its first input instead. Stores the clip as one float32.
    """

    def __init__(self, bits: BitWidth, signed: bool, calibration: str = "mse", learn_clip: bool = False):
        if calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
        if bits.fractional:
            raise ValueError("the linear quantizer takes fixed (integer) widths")
        super().__init__(bits)
        self.signed = bool(signed)
        self.calibration = calibration
        self.clip = nn.Parameter(torch.tensor(1.0), requires_grad=bool(learn_clip))
        self.register_buffer("calibrated", torch.tensor(False))
        self._calibrated = False  # mirrors the buffer without a device sync
        self._width = self._int_width()

    def _int_width(self) -> int:
        bits = self.bits.discrete()
        if not isinstance(bits, int):
            raise ValueError("the linear quantizer takes one width per tensor")
        return bits

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.calibrated)

    def set_bits(self, bits: Bits) -> None:
        self.bits = FixedBits(bits).to(self.clip.device)
        self._width = self._int_width()

    def set_clip(self, clip: float) -> None:
        """Set the clip (e.g. one calibrated earlier for the same tensor and width)."""
        with torch.no_grad():
            self.clip.fill_(float(clip))
            self.calibrated.fill_(True)
        self._calibrated = True

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Choose the clip for the current width from a sample of the tensor, by ``calibration``."""
        if x.numel() and self._width < MAX_BITS:
            self.set_clip(choose_clip(x, self._width, self.signed, self.calibration))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self._width
        if b >= MAX_BITS:
            return x
        if not self._calibrated:
            if not self.training:
                return x
            self.set_clip(float(x.detach().abs().max().clamp_min(1e-8)))
        c = self.clip.abs().clamp_min(1e-8)
        if b == 0:
            return x * 0.0
        y = torch.minimum(x, c)
        y = torch.maximum(y, -c) if self.signed else torch.clamp_min(y, 0.0)
        if self.signed and b == 1:
            q = torch.where(y >= 0, c, -c)
        else:
            step = c / grid_levels(b, self.signed)
            q = torch.round(y / step) * step
        return y + (q - y).detach()

    def scale_bits(self) -> int:
        return 32

    def extra_repr(self) -> str:
        return f"signed={self.signed}, calibration={self.calibration!r}"
