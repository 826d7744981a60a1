"""Quantizers rebuilt from integer forms: the layers of a model read back from a packed file.

A model that :func:`mpsearch.export.load_packed` rebuilds has these in place of the
quantizers it was trained with. They compute the same outputs bit for bit, because
they hold exactly what the trained quantizers' :meth:`integer_form` gave (which the
conformance check holds to their forward pass), and they give that form back, so
a rebuilt model exports again unchanged.
"""

from __future__ import annotations

import torch

from mpsearch.assignment import Bits
from mpsearch.quant.integer import IntegerForm
from mpsearch.quant.quantizers import Quantizer


def _bits(form: IntegerForm) -> Bits:
    bits = form.bits.to(torch.int64)
    return int(bits) if bits.dim() == 0 else bits


class StoredWeights(Quantizer):
    """A layer's quantized weights, stored: ``forward`` returns them whatever it is handed.

    Args:
        form: the weights' integer form.
        scale_bits: what the trained quantizer reported as its ``scale_bits``.
    """

    def __init__(self, form: IntegerForm, scale_bits: int = 0):
        super().__init__()
        self.form = form
        self._scale_bits = int(scale_bits)
        self.register_buffer("values", form.dequantize())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.values

    def integer_bits(self) -> Bits:
        return _bits(self.form)

    def scale_bits(self) -> int:
        return self._scale_bits

    def integer_form(self, x: torch.Tensor) -> IntegerForm:
        return self.form

    def extra_repr(self) -> str:
        return f"grid={self.form.grid}, shape={tuple(self.form.shape)}"


class StoredInputs(Quantizer):
    """A layer's input quantizer, as its grid: ``forward`` encodes on it and dequantizes.

    Args:
        template: the grid (codes, if any, are dropped).
        scale_bits: what the trained quantizer reported as its ``scale_bits``.
    """

    def __init__(self, template: IntegerForm, scale_bits: int = 0):
        super().__init__()
        self.template = template.template()
        self._scale_bits = int(scale_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.template.encode(x).dequantize().to(x.device)

    def integer_bits(self) -> Bits:
        return _bits(self.template)

    def scale_bits(self) -> int:
        return self._scale_bits

    def integer_form(self, x: torch.Tensor) -> IntegerForm:
        return self.template.encode(x)

    def extra_repr(self) -> str:
        return f"grid={self.template.grid}" + (", dynamic" if getattr(self.template, "dynamic", False) else "")


__all__ = ["StoredInputs", "StoredWeights"]
