"""The conformance check for a quantizer's integer form (what export relies on).

:func:`check_integer_form` is what a quantizer must pass for ``mpsearch export`` to
write it: its :meth:`~mpsearch.quant.quantizers.Quantizer.integer_form` dequantizes
to its forward output bit for bit, agrees with its ``integer_bits``, and survives
being packed and read back. A third party calls it from its own tests::

    from mpsearch.testing.quantizers import check_integer_form

    def test_my_quantizer_exports():
        check_integer_form(MyQuantizer(...), torch.randn(16, 8, 3, 3), role="weight")
"""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.quant.integer import IntegerForm, Packed, pack_bits, unpack_bits
from mpsearch.quant.quantizers import Quantizer

ROLES = ("weight", "input")


def _differences(a: torch.Tensor, b: torch.Tensor) -> str:
    wrong = a != b
    return (f"{int(wrong.sum())} of {a.numel()} values differ, by up to "
            f"{float((a - b).abs().max()):.3g}")


def round_trip(form: IntegerForm) -> IntegerForm:
    """``form`` written as a packed file would hold it (bit streams at their widths) and read back."""
    meta, arrays = form.to_fields()
    stored = {}
    for name, value in arrays.items():
        if isinstance(value, Packed):
            widths = np.broadcast_to(np.asarray(value.widths, dtype=np.int64), value.values.shape)
            stored[name] = pack_bits(value)
            back = unpack_bits(stored[name], widths, value.values.size)
            # a code wider than its width would lose bits here
            assert np.array_equal(back, value.values), (
                f"{form.grid} grid: field {name!r} holds values wider than their widths")
        else:
            stored[name] = np.array(value, dtype=np.float32)
    return IntegerForm.from_fields(meta, stored)


def check_integer_form(quantizer: Quantizer, x: torch.Tensor, role: str = "weight") -> IntegerForm:
    """Assert that ``quantizer``'s integer form of ``x`` is exact, and return it.

    Checks, in eval mode: ``dequantize()`` equals ``quantizer(x)`` bit for bit; the
    form's widths equal ``integer_bits()``; the form packed at its widths and read
    back is the same form (no code is wider than its width); its
    :meth:`~mpsearch.quant.integer.IntegerForm.storage_bits` is what packing takes;
    and, for an input quantizer (``role="input"``), that the form's template
    encodes ``x`` to the same values.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    was_training = quantizer.training
    quantizer.eval()
    try:
        with torch.no_grad():
            out = quantizer(x).detach().cpu()
            form = quantizer.integer_form(x)
    finally:
        quantizer.train(was_training)
    name = type(quantizer).__name__
    assert isinstance(form, IntegerForm), f"{name}.integer_form returned {type(form).__name__}"
    assert form.codes is not None, f"{name}.integer_form returned a template without codes"
    assert tuple(form.shape) == tuple(out.shape), f"{name}: form shape {form.shape} != output {tuple(out.shape)}"
    values = form.dequantize()
    assert values.dtype == out.dtype, f"{name}: dequantized {values.dtype}, forward {out.dtype}"
    assert torch.equal(values, out), f"{name} ({form.grid} grid): {_differences(values, out)}"
    expected = torch.as_tensor(quantizer.integer_bits()).to(torch.int64)
    widths = torch.broadcast_to(form.bits, out.shape)
    assert torch.equal(widths, torch.broadcast_to(expected, out.shape)), (
        f"{name}: the form's widths are not integer_bits()")
    back = round_trip(form)
    assert torch.equal(back.dequantize(), out), f"{name}: packed and read back, {_differences(back.dequantize(), out)}"
    assert torch.equal(torch.broadcast_to(back.bits, out.shape), widths), f"{name}: widths lost in packing"
    meta, arrays = form.to_fields()
    packed = sum(v.total_bits if isinstance(v, Packed) else 32 * np.asarray(v).size
                 for k, v in arrays.items() if k != "bits")
    from mpsearch.quant.integer import width_map_bits

    assert form.storage_bits() == packed + width_map_bits(meta), f"{name}: storage_bits() is not what packing takes"
    if role == "input":
        again = form.template().encode(x)
        assert torch.equal(again.dequantize(), out), f"{name}: its template encodes x differently"
        assert round_trip(form.template()).encode(x).dequantize().equal(out), (
            f"{name}: its template, packed and read back, encodes x differently")
    return form


__all__ = ["check_integer_form", "round_trip"]
