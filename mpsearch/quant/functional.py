"""Fake quantization on a uniform grid, for integer and fractional bit-widths.

Every quantizer here maps a tensor affinely onto ``u`` in ``[0, 1]``, rounds ``u``
onto the grid of ``2**n - 1`` steps, and maps the result affinely back:

    u = clamp((x - lo) / scale, 0, 1)
    q_n(u) = round(u * (2**n - 1)) / (2**n - 1)
    out = out_lo + out_scale * q_n(u)

A fractional width ``n = b + a`` (``b = floor(n)``) interpolates the two
neighbouring integer grids, as BitPruning and FracBits both define it:
``q = (1 - a) q_b + a q_{b+1}``. It equals the integer quantizer at integer ``n``
and its derivative with respect to ``n`` is ``q_{b+1} - q_b`` everywhere (both
neighbours of an integer ``n`` are ``n`` and ``n + 1``, so the gradient does not
vanish at integers). Rounding passes gradients straight through to ``x`` inside
the clipping range.

The forward pass computes both neighbours in one elementwise expression; the
backward pass recomputes them instead of saving them. With ``torch.compile``
(see :func:`set_compile`) each pass is one fused kernel over the tensor.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

_COMPILE_MODES = ("auto", "on", "off")
_state = {"mode": os.environ.get("MPSEARCH_COMPILE", "auto")}


def set_compile(mode: str) -> None:
    """Choose when the fake-quantization kernels are compiled with ``torch.compile``.

    Args:
        mode: ``"on"``, ``"off"`` or ``"auto"`` (the default, also settable with the
            environment variable ``MPSEARCH_COMPILE``): compile on CUDA when Triton
            is present, where fusing the elementwise passes pays; stay eager on the
            CPU, where ``benchmarks/quant_step.py`` measured no reliable gain and
            compiling costs seconds per process. ``"on"`` compiles on any device
            (the CPU needs a C++ compiler). A compilation failure falls back to
            eager kernels with one warning.
    """
    if mode not in _COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {_COMPILE_MODES}, not {mode!r}")
    _state["mode"] = mode


def compile_mode() -> str:
    return _state["mode"]


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_compiled(device_type: str) -> bool:
    mode = _state["mode"]
    return mode == "on" or (mode == "auto" and device_type == "cuda" and _triton_available())


# -- the elementwise kernels (eager definitions; compiled on demand) ----------------------

def _grid(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.round(u * levels) / levels


def _fwd_int(x, n, lo, scale, out_lo, out_scale, pruning: bool):
    u = ((x - lo) / scale).clamp(0.0, 1.0)
    levels = torch.exp2(n) - 1.0
    out = out_lo + out_scale * _grid(u, levels)
    if pruning:  # zero bits: the value is removed
        out = torch.where(levels > 0, out, torch.zeros_like(out))
    return out


def _fwd_frac(x, n, lo, scale, out_lo, out_scale):
    u = ((x - lo) / scale).clamp(0.0, 1.0)
    b = torch.floor(n)
    l1 = torch.exp2(b) - 1.0
    q1 = _grid(u, l1)
    q2 = _grid(u, 2.0 * l1 + 1.0)
    return out_lo + out_scale * (q1 + (n - b) * (q2 - q1))


def _bwd(g, x, n, lo, scale, out_lo, out_scale, fractional: bool, pruning: bool,
         need_x: bool, need_n: bool, alpha_mode: int):
    """Gradients for x, n and (``alpha_mode`` 1: one-sided, 2: two-sided) PACT's clip."""
    r = (x - lo) / scale
    inside = (r >= 0.0) & (r <= 1.0)
    dx = dn = dalpha = None
    if need_x:
        dx = torch.where(inside, g * (out_scale / scale), torch.zeros_like(g))
        if pruning:
            dx = torch.where(torch.exp2(n) > 1.0, dx, torch.zeros_like(dx))
    if need_n:
        u = r.clamp(0.0, 1.0)
        b = torch.floor(n)
        l1 = torch.exp2(b) - 1.0
        dn = g * (out_scale * (_grid(u, 2.0 * l1 + 1.0) - _grid(u, l1)))
    if alpha_mode:
        # PACT: d out / d alpha is 1 above the clip (and -1 below it when two-sided)
        dalpha = torch.where(r > 1.0, g, torch.zeros_like(g))
        if alpha_mode == 2:
            dalpha = dalpha - torch.where(r < 0.0, g, torch.zeros_like(g))
        dalpha = dalpha.sum()
    return dx, dn, dalpha


@functools.cache
def _compiled(name: str):
    fn = {"fwd_int": _fwd_int, "fwd_frac": _fwd_frac, "bwd": _bwd}[name]
    # Several tensor ranks and flag combinations are normal here; allow them all.
    limit = getattr(torch._dynamo.config, "recompile_limit", 8)
    torch._dynamo.config.recompile_limit = max(limit, 64)
    return torch.compile(fn, dynamic=True)


def _kernel(name: str, device_type: str):
    eager = {"fwd_int": _fwd_int, "fwd_frac": _fwd_frac, "bwd": _bwd}[name]
    if not _use_compiled(device_type):
        return eager
    compiled = _compiled(name)

    def run(*args, **kwargs):
        if not _use_compiled(device_type):
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a missing toolchain shows up only here
            warnings.warn(f"mpsearch: torch.compile of the fake-quantization kernels failed "
                          f"({type(exc).__name__}); using eager kernels.", stacklevel=3)
            _state["mode"] = "off"
            return eager(*args, **kwargs)

    return run


# -- shapes ---------------------------------------------------------------------------------

def _collapse(x_shape: torch.Size, n_shape: torch.Size):
    """Merge neighbouring dims of ``x`` that ``n`` treats alike into rank-3 views.

    Returns the view shapes of ``x`` and ``n``, or None when the broadcast pattern
    needs more than three runs (then ``n`` is expanded). Keeping every call at
    rank 3 lets one compiled kernel serve every granularity.
    """
    numel = x_shape.numel()
    if n_shape.numel() == 1:
        return (1, 1, numel), (1, 1, 1)
    runs: list[list] = []  # [x extent, n extent, kept]
    for xs, ns in zip(x_shape, n_shape):
        if xs == 1:
            continue
        kept = ns == xs
        if runs and runs[-1][2] == kept:
            runs[-1][0] *= xs
            runs[-1][1] *= ns
        else:
            runs.append([xs, ns, kept])
    if len(runs) > 3:
        return None
    runs = [[1, 1, True]] * (3 - len(runs)) + runs
    return tuple(r[0] for r in runs), tuple(r[1] for r in runs)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, lo, scale, out_lo, out_scale, alpha, fractional, pruning, alpha_mode):
        views = _collapse(x.shape, n.shape)
        if views is None:
            x3, n3 = x.detach().reshape(1, 1, -1), n.detach().expand(x.shape).reshape(1, 1, -1)
        else:
            x3, n3 = x.detach().reshape(views[0]), n.detach().reshape(views[1])
        ctx.save_for_backward(x3, n3, lo, scale, out_lo, out_scale)
        ctx.meta = (x.shape, n.shape, views is None, fractional, pruning, alpha_mode)
        if fractional:
            out = _kernel("fwd_frac", x.device.type)(x3, n3, lo, scale, out_lo, out_scale)
        else:
            out = _kernel("fwd_int", x.device.type)(x3, n3, lo, scale, out_lo, out_scale, pruning)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x3, n3, lo, scale, out_lo, out_scale = ctx.saved_tensors
        x_shape, n_shape, expanded, fractional, pruning, alpha_mode = ctx.meta
        need_x, need_n = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and fractional
        alpha_mode = alpha_mode if ctx.needs_input_grad[6] else 0
        dx, dn, dalpha = _kernel("bwd", g.device.type)(
            g.reshape(x3.shape), x3, n3, lo, scale, out_lo, out_scale, fractional, pruning,
            need_x, need_n, alpha_mode)
        if dx is not None:
            dx = dx.reshape(x_shape)
        if dn is not None:
            dn = (dn.reshape(x_shape).sum_to_size(n_shape) if expanded
                  else dn.sum_to_size(n3.shape).reshape(n_shape))
        return dx, dn, None, None, None, None, dalpha, None, None, None


def fake_quant(x: torch.Tensor, bits: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor,
               out_lo: torch.Tensor | float, out_scale: torch.Tensor | float, *,
               fractional: bool, pruning: bool = False, alpha: torch.Tensor | None = None,
               two_sided: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` on the uniform grid described in the module docstring.

    Args:
        bits: widths, a 0-d tensor or one broadcastable onto ``x``; must be >= 1
            when ``fractional``. Receives a gradient only when ``fractional``.
        lo, scale: the input range ``[lo, lo + scale]`` (treated as constants).
        out_lo, out_scale: the output range.
        fractional: interpolate between ``floor(bits)`` and ``floor(bits) + 1``.
        pruning: some widths may be 0; those values become exactly 0.
        alpha: PACT's learnable clip, to receive PACT's gradient (1 above the clip,
            and -1 below it when ``two_sided``); ``lo``/``scale`` must derive from it.
    """
    dev, dt = x.device, x.dtype
    lo, scale = (torch.as_tensor(v, device=dev, dtype=dt).detach() for v in (lo, scale))
    out_lo, out_scale = (torch.as_tensor(v, device=dev, dtype=dt).detach() for v in (out_lo, out_scale))
    bits = bits.to(device=dev, dtype=dt)
    alpha_mode = 0 if alpha is None else (2 if two_sided else 1)
    if alpha is None:
        alpha = torch.zeros((), device=dev, dtype=dt)
    return _FakeQuant.apply(x, bits, lo, scale, out_lo, out_scale, alpha, fractional, pruning, alpha_mode)
