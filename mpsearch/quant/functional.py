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
the clipping range ``[lo, lo + scale]``.

Two implementations compute the same thing:

- **eager** (the CPU default): a few in-place passes over the tensor. Every
  per-tensor constant (the grid's levels, the affine maps folded into one
  multiply-add) is computed once on the small widths tensor; a caller that knows
  its input lies inside the range (min-max, DoReFa's ``tanh``) says so with
  ``bounded`` and skips the clip and the backward mask, and where the output
  range is the input range the gradient to ``x`` is ``g`` itself. A fractional
  width keeps ``q_{b+1} - q_b`` from the forward pass for its gradient (one
  tensor of the input's size, while the step runs) instead of recomputing both
  grids.
- **compiled** (CUDA's default, see :func:`set_compile`): each pass is one fused
  ``torch.compile`` kernel that recomputes what it needs, in float32 whatever the
  input's dtype (bf16 under autocast keeps its rounding exact).
"""

from __future__ import annotations

import functools
import math
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
            CPU, where the eager kernels make few passes and compiling costs seconds
            per process. ``"on"`` compiles on any device (the CPU needs a C++
            compiler). A compilation failure falls back to eager kernels with one
            warning.
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


def use_compiled(device_type: str) -> bool:
    """Whether fake quantization on ``device_type`` runs the compiled kernels now."""
    mode = _state["mode"]
    return mode == "on" or (mode == "auto" and device_type == "cuda" and _triton_available())


# -- the compiled kernels: one fused pass each, float32 inside --------------------------------

def _grid(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.round(u * levels) / levels


def _fwd_int(x, n, lo, scale, out_lo, out_scale, pruning: bool):
    # the eager kernel's order of operations, so both give the same floats where no
    # multiply-add is fused
    u = ((x.float() - lo) / scale).clamp(0.0, 1.0)
    levels = torch.exp2(n) - 1.0
    out = torch.round(u * levels) * (out_scale / levels) + out_lo
    if pruning:  # zero bits: the value is removed
        out = torch.where(levels > 0, out, torch.zeros_like(out))
    return out.to(x.dtype)


def _fwd_frac(x, n, lo, scale, out_lo, out_scale):
    u = ((x.float() - lo) / scale).clamp(0.0, 1.0)
    b = torch.floor(n)
    l1 = torch.exp2(b) - 1.0
    q1 = _grid(u, l1)
    q2 = _grid(u, 2.0 * l1 + 1.0)
    return (out_lo + out_scale * (q1 + (n - b) * (q2 - q1))).to(x.dtype)


def _bwd(g, x, n, lo, scale, out_lo, out_scale, fractional: bool, pruning: bool,
         need_x: bool, need_n: bool, alpha_mode: int):
    """Gradients for x, n and (``alpha_mode`` 1: one-sided, 2: two-sided) PACT's clip."""
    gf, xf = g.float(), x.float()
    r = (xf - lo) / scale
    inside = (r >= 0.0) & (r <= 1.0)
    dx = dn = dalpha = None
    if need_x:
        dx = torch.where(inside, gf * (out_scale / scale), torch.zeros_like(gf))
        if pruning:
            dx = torch.where(torch.exp2(n) > 1.0, dx, torch.zeros_like(dx))
        dx = dx.to(g.dtype)
    if need_n:
        u = r.clamp(0.0, 1.0)
        b = torch.floor(n)
        l1 = torch.exp2(b) - 1.0
        dn = gf * (out_scale * (_grid(u, 2.0 * l1 + 1.0) - _grid(u, l1)))
    if alpha_mode:
        # PACT: d out / d alpha is 1 above the clip (and -1 below it when two-sided)
        dalpha = torch.where(r > 1.0, gf, torch.zeros_like(gf))
        if alpha_mode == 2:
            dalpha = dalpha - torch.where(r < 0.0, gf, torch.zeros_like(gf))
        dalpha = dalpha.sum()
    return dx, dn, dalpha


_EAGER = {"fwd_int": _fwd_int, "fwd_frac": _fwd_frac, "bwd": _bwd}


@functools.cache
def _compiled(name: str):
    # Several tensor ranks and flag combinations are normal here; allow them all.
    limit = getattr(torch._dynamo.config, "recompile_limit", 8)
    torch._dynamo.config.recompile_limit = max(limit, 64)
    return torch.compile(_EAGER[name], dynamic=True)


def _run_compiled(name: str, *args):
    """The compiled kernel ``name``, or its eager definition once compilation has failed."""
    if _state["mode"] == "off":
        return _EAGER[name](*args)
    try:
        return _compiled(name)(*args)
    except Exception as exc:  # noqa: BLE001 - a missing toolchain shows up only here
        warnings.warn(f"mpsearch: torch.compile of the fake-quantization kernels failed "
                      f"({type(exc).__name__}); using eager kernels.", stacklevel=4)
        _state["mode"] = "off"
        return _EAGER[name](*args)


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


class _CompiledFakeQuant(torch.autograd.Function):
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
            out = _run_compiled("fwd_frac", x3, n3, lo, scale, out_lo, out_scale)
        else:
            out = _run_compiled("fwd_int", x3, n3, lo, scale, out_lo, out_scale, pruning)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x3, n3, lo, scale, out_lo, out_scale = ctx.saved_tensors
        x_shape, n_shape, expanded, fractional, pruning, alpha_mode = ctx.meta
        need_x, need_n = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and fractional
        alpha_mode = alpha_mode if ctx.needs_input_grad[6] else 0
        dx, dn, dalpha = _run_compiled("bwd", g.reshape(x3.shape), x3, n3, lo, scale, out_lo,
                                       out_scale, fractional, pruning, need_x, need_n, alpha_mode)
        if dx is not None:
            dx = dx.reshape(x_shape)
        if dn is not None:
            dn = (dn.reshape(x_shape).sum_to_size(n_shape) if expanded
                  else dn.sum_to_size(n3.shape).reshape(n_shape))
            dn = dn.to(n3.dtype)
        if dalpha is not None:
            dalpha = dalpha.to(lo.dtype)
        return dx, dn, None, None, None, None, dalpha, None, None, None


# -- the eager kernels: few passes, in place -------------------------------------------------

@functools.lru_cache(maxsize=64)
def _const(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d constant, made once per value, dtype and device (never written to)."""
    return torch.tensor(value, dtype=dtype, device=device)


class _EagerFakeQuant(torch.autograd.Function):
    """The module docstring's grid in a few in-place passes.

    Every pass is one of ATen's vectorised elementwise kernels with the tensor and a
    constant: the constants (levels, their reciprocals, the output map) are computed on
    ``n``'s small tensor, and the clip is to the numbers 0 and 1 (a clip to tensor bounds,
    or a multiply-add whose addend broadcasts, runs several times slower on the CPU).
    """

    @staticmethod
    def forward(ctx, x, n, lo, scale, out_lo, out_scale, alpha, fractional, pruning, alpha_mode,
                bounded, identity):
        need_n = fractional and ctx.needs_input_grad[1]
        diff = None
        # (x - lo) / scale, divided: a reciprocal's rounding would move two-sided grids' zero
        # (u = 1/2 exactly, a tie) off its tie, away from what an exported graph computes
        u = torch.sub(x, lo).div_(scale)
        if not bounded:
            u.clamp_(0.0, 1.0)
        if fractional:
            b = torch.floor(n)
            l1 = torch.exp2(b) - 1.0
            l2 = 2.0 * l1 + 1.0
            q1 = torch.mul(u, l1).round_().mul_(out_scale / l1)  # out_scale * q_b
            # out_scale * (q_{b+1} - q_b), kept for the gradient of n; then
            # out = out_lo + out_scale * (q_b + a * (q_{b+1} - q_b)), a = n - b
            diff = u.mul_(l2).round_().mul_(out_scale / l2).sub_(q1)
            out = q1.addcmul_(diff, n - b).add_(out_lo)
        else:
            levels = torch.exp2(n) - 1.0
            step = out_scale / levels
            if pruning:  # zero bits: the value is removed (0 * inf would be NaN)
                kept = levels > 0
                step = torch.where(kept, step, torch.zeros_like(step))
                out_lo = torch.where(kept, out_lo, torch.zeros_like(step))
            out = u.mul_(levels).round_().mul_(step).add_(out_lo)
        ctx.save_for_backward(None if bounded else x, n if pruning else None, lo, scale, out_scale,
                              diff if need_n else None)
        ctx.meta = (alpha_mode, identity)
        ctx.saved_n_shape = n.shape
        return out

    @staticmethod
    def backward(ctx, g):
        x, n, lo, scale, out_scale, diff = ctx.saved_tensors
        alpha_mode, identity = ctx.meta
        alpha_mode = alpha_mode if ctx.needs_input_grad[6] else 0
        need_x = ctx.needs_input_grad[0]
        dx = dn = dalpha = None
        if need_x or alpha_mode:
            if n is not None:  # pruning: no gradient through a removed value
                ratio = torch.where(torch.exp2(n) > 1.0, out_scale / scale, torch.zeros_like(n))
            else:
                ratio = None if identity else out_scale / scale
            if x is None:  # bounded: every value lies inside the range
                dx = g if ratio is None else g * ratio
            else:
                inside, above = _clip_masks(g, x, lo, lo + scale)
                dx = inside if ratio is None else inside * ratio
                if alpha_mode:
                    # PACT: d out / d alpha is 1 above the clip (and -1 below it when two-sided)
                    dalpha = above.sum()
                    if alpha_mode == 2:
                        below = g.sum() - inside.sum() - dalpha
                        dalpha = dalpha - below
        if diff is not None:
            shape = ctx.saved_n_shape
            if diff.shape == g.shape and math.prod(shape) == 1 and g.is_contiguous():
                dn = torch.dot(g.reshape(-1), diff.reshape(-1)).reshape(shape)
            else:
                dn = (g * diff).sum_to_size(shape)
        return (dx if need_x else None), dn, None, None, None, None, dalpha, None, None, None, None, None


def _clip_masks(g: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``g`` where ``lo <= x <= hi`` (else 0), and ``g`` where ``x > hi`` (else 0).

    On the CPU each is one vectorised pass of ATen's hardtanh and threshold backward
    kernels, whose bounds are numbers (reading them is no device sync there); the
    bounds move one float outwards because hardtanh's are exclusive.
    """
    if x.device.type == "cpu" and lo.dim() == 0 and hi.dim() == 0:
        low = float(torch.nextafter(lo, lo.new_tensor(-math.inf)))
        high = float(torch.nextafter(hi, hi.new_tensor(math.inf)))
        inside = torch.ops.aten.hardtanh_backward(g, x, low, high)
        return inside, torch.ops.aten.threshold_backward(g, x, float(hi))
    above = x > hi
    return g.masked_fill(above | (x < lo), 0.0), torch.where(above, g, 0.0)


def fake_quant(x: torch.Tensor, bits: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor,
               out_lo: torch.Tensor | float, out_scale: torch.Tensor | float, *,
               fractional: bool, pruning: bool = False, alpha: torch.Tensor | None = None,
               two_sided: bool = False, bounded: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` on the uniform grid described in the module docstring.

    Args:
        bits: widths, a 0-d tensor or one broadcastable onto ``x``; must be >= 1
            when ``fractional``. Receives a gradient only when ``fractional``.
        lo, scale: the input range ``[lo, lo + scale]`` (0-d, treated as constants).
        out_lo, out_scale: the output range (0-d); passing ``scale`` itself as
            ``out_scale`` (the same tensor) makes the gradient to ``x`` exactly ``g``
            inside the range.
        fractional: interpolate between ``floor(bits)`` and ``floor(bits) + 1``.
        pruning: some widths may be 0; those values become exactly 0.
        alpha: PACT's learnable clip, to receive PACT's gradient (1 above the clip,
            and -1 below it when ``two_sided``); ``lo``/``scale`` must derive from it.
        bounded: the caller guarantees ``lo <= x <= lo + scale`` (the range is the
            tensor's own, as min-max and DoReFa take it): nothing is clipped.
    """
    dev, dt = x.device, x.dtype
    alpha_mode = 0 if alpha is None else (2 if two_sided else 1)
    if use_compiled(dev.type):
        f32 = torch.float32
        lo, scale, out_lo, out_scale = (torch.as_tensor(v, device=dev, dtype=f32).detach()
                                        for v in (lo, scale, out_lo, out_scale))
        if alpha is None:
            alpha = torch.zeros((), device=dev, dtype=f32)
        return _CompiledFakeQuant.apply(x, bits.to(device=dev, dtype=f32), lo, scale, out_lo,
                                        out_scale, alpha, fractional, pruning, alpha_mode)
    work = x if dt in (torch.float32, torch.float64) else x.float()  # bf16 rounds too coarsely
    wt = work.dtype
    identity = out_scale is scale
    lo, scale, out_lo = (_as(v, wt, dev) for v in (lo, scale, out_lo))
    out_scale = scale if identity else _as(out_scale, wt, dev)
    if bits.dtype != wt or bits.device != dev:
        bits = bits.to(device=dev, dtype=wt)
    out = _EagerFakeQuant.apply(work, bits, lo, scale, out_lo, out_scale, alpha, fractional,
                                pruning, alpha_mode, bounded, identity)
    return out if out.dtype == dt else out.to(dt)


def _as(v: torch.Tensor | float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return v if v.dtype == dtype and v.device == device else v.to(device=device, dtype=dtype)
    return _const(float(v), dtype, device)
