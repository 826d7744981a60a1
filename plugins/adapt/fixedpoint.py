"""Fixed-point numbers ⟨WL, FL⟩ with stochastic rounding, and AdaPT's precision-switching rules.

Kummer et al., "Adaptive Precision Training (AdaPT): A dynamic quantized training
approach for DNNs" (2021), Sec. 3. A format ⟨WL, FL⟩ is a signed two's-complement
word of ``WL`` bits of which ``FL`` are fractional: the values ``k * 2**-FL`` for
integers ``-2**(WL-1) <= k <= 2**(WL-1) - 1``. Values outside the range saturate.

Everything here is a pure function of tensors and numbers, so that the
``adapt`` strategy, its performance model and the tests share one definition:

- :func:`stochastic_round` / :func:`round_nearest`: onto a format's grid.
- :func:`truncated_normal_variance_scaling_`: the paper's TNVS initialisation.
- :class:`BinnedReference`, :func:`binned_kl` and :func:`push_down`: the coarsest
  lossless format (bisection).
- :func:`gradient_diversity`, :func:`push_up_step` and :func:`push_up`: the increase
  gradient diversity asks for, with buffer bits.
- :func:`adapt_lookback`, :func:`adapt_resolution`, :func:`adapt_strategy`: the
  runtime adaptation of lookback, resolution and PushUp strategy (Sec. 3.3).
- :class:`FixedPointQuantizer`: a weight quantizer holding the quantized copy of
  a float32 master weight (refreshed after each optimizer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.api import MAX_BITS, AffineGrid, Bits, MpsearchError, Quantizer

MAX_FL = MAX_BITS
STRATEGIES = ("min", "mean", "max")
PSEUDOCOUNT = 0.5  # values added to every bin before the KL divergence (see BinnedReference)


@dataclass(frozen=True, order=True)
class FixedPoint:
    """A signed fixed-point format: ``wl`` bits in all, ``fl`` of them fractional.

    Ordering is lexicographic on ``(wl, fl)``: fewer bits first, then the coarser grid.
    """

    wl: int
    fl: int

    def __post_init__(self):
        if isinstance(self.wl, bool) or not isinstance(self.wl, int) or not 1 <= self.wl <= MAX_BITS:
            raise ValueError(f"word length must be an integer 1-{MAX_BITS}, not {self.wl!r}")
        if isinstance(self.fl, bool) or not isinstance(self.fl, int) or not 0 <= self.fl <= MAX_FL:
            raise ValueError(f"fractional length must be an integer 0-{MAX_FL}, not {self.fl!r}")

    @property
    def resolution(self) -> float:
        """The grid step, ``2**-FL``."""
        return 2.0 ** -self.fl

    @property
    def lowest(self) -> float:
        return -(2.0 ** (self.wl - 1)) * self.resolution

    @property
    def highest(self) -> float:
        return (2.0 ** (self.wl - 1) - 1) * self.resolution

    def __str__(self) -> str:
        return f"<{self.wl}, {self.fl}>"


def _saturate(k: torch.Tensor, wl: int | None) -> torch.Tensor:
    if wl is None:
        return k
    top = 2.0 ** (wl - 1)
    return k.clamp(-top, top - 1)


def stochastic_round(x: torch.Tensor, fmt: FixedPoint, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Round ``x`` onto ``fmt``'s grid stochastically (Sec. 3.2), then saturate.

    ``SR(x) = floor(x) + 1`` with probability ``(x - floor(x)) / eps`` on the grid of
    step ``eps = 2**-FL``, else ``floor(x)``: unbiased inside the range.
    """
    scale = 2.0 ** fmt.fl
    y = x * scale
    low = torch.floor(y)
    p = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    k = low + (p < (y - low)).to(x.dtype)
    return _saturate(k, fmt.wl) / scale


def round_nearest(x: torch.Tensor, fl: int, wl: int | None = None) -> torch.Tensor:
    """Round ``x`` to the nearest multiple of ``2**-fl`` (saturating at ``wl`` bits if given)."""
    scale = 2.0 ** fl
    return _saturate(torch.round(x * scale), wl) / scale


@torch.no_grad()
def truncated_normal_variance_scaling_(weight: torch.Tensor, scale: float = 1.0,
                                       generator: torch.Generator | None = None) -> torch.Tensor:
    """TNVS (Sec. 3.1): ``N(0, sqrt(s / n))`` truncated to ``±sqrt(3 s / n)``, n the fan-in."""
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    std = math.sqrt(scale / fan_in)
    bound = math.sqrt(3.0 * scale / fan_in)
    return nn.init.trunc_normal_(weight, 0.0, std, -bound, bound, generator=generator)


class BinnedReference:
    """The binned empirical distribution ``Q`` of a tensor (the float32 weights), to compare others with.

    ``resolution`` equal bins span the reference's range; values of a compared
    tensor outside that range (a rounding up past the largest weight) count in
    the edge bins. Every bin of both histograms starts with ``pseudocount``
    values (a deviation: without it, a bin that ``P`` fills and ``Q`` leaves
    empty, common in the tails of a small layer at a fine resolution, makes the
    divergence infinite at some grids but not at coarser ones, and the bisection
    of :func:`push_down` needs a divergence that falls as the grid gets finer).
    With ``pseudocount=0`` such a bin gives ``inf``.
    """

    def __init__(self, reference: torch.Tensor, bins: int, pseudocount: float = PSEUDOCOUNT):
        if bins < 1:
            raise ValueError(f"resolution must be at least 1 bin, not {bins!r}")
        values = reference.detach().flatten().float()
        self.lo, self.hi = float(values.min()), float(values.max())
        self.bins, self.pseudocount = int(bins), float(pseudocount)
        self.q = self._distribution(values)

    def _distribution(self, values: torch.Tensor) -> torch.Tensor:
        counts = torch.histc(values.clamp(self.lo, self.hi), bins=self.bins, min=self.lo, max=self.hi)
        counts = counts.double() + self.pseudocount
        return counts / counts.sum()

    def kl(self, quantized: torch.Tensor) -> float:
        """``KL(P || Q)`` in bits, ``P`` the binned distribution of ``quantized`` (Eq. 2)."""
        if self.hi <= self.lo:  # a constant tensor: one bin holds everything
            return 0.0
        p, q = self._distribution(quantized.detach().flatten().float()), self.q
        filled = p > 0
        if bool((filled & (q == 0)).any()):
            return math.inf
        return float((p[filled] * torch.log2(p[filled] / q[filled])).sum())


def binned_kl(quantized: torch.Tensor, reference: torch.Tensor, bins: int,
              pseudocount: float = PSEUDOCOUNT) -> float:
    """Discrete KL divergence ``KL(P || Q)`` in bits of two tensors' histograms (Sec. 3.3, (1)-(2)).

    ``P`` is the empirical distribution of ``quantized``, ``Q`` that of
    ``reference`` (the float32 weights), binned as :class:`BinnedReference` says.
    """
    return BinnedReference(reference, bins, pseudocount).kl(quantized)


def _smallest(ok, low: int, high: int) -> int | None:
    """The smallest ``v`` in ``[low, high]`` with ``ok(v)``, assuming ``ok`` is monotone; None if none."""
    if not ok(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid + 1
    return high


@torch.no_grad()
def push_down(weight: torch.Tensor, resolution: int, threshold: float) -> FixedPoint:
    """PushDown (Alg. 3): the coarsest format whose quantized weights lose no information.

    Two bisections: first the coarsest grid, the fewest fractional bits ``FL_min``
    whose rounding (without saturation) keeps ``KL(P || Q)`` below ``threshold`` at
    ``resolution`` bins; then the fewest word bits ``WL_min`` that keep it below
    ``threshold`` at ``FL_min``. These are the two quantities PushUp starts from
    (the grid it refines and the range it must keep). Both bisections assume the
    divergence does not rise with more bits. Rounding here is to the nearest
    grid point, so the decision does not depend on a random draw. Where no grid
    qualifies, ``FL = 32``; where no word holds the weights, ``WL = 32``.
    """
    w = weight.detach().float()
    reference = BinnedReference(w, resolution)
    fl = _smallest(lambda f: reference.kl(round_nearest(w, f)) < threshold, 0, MAX_FL)
    fl = MAX_FL if fl is None else fl
    wl = _smallest(lambda n: reference.kl(round_nearest(w, fl, n)) < threshold, 1, MAX_BITS)
    return FixedPoint(MAX_BITS if wl is None else wl, fl)


def gradient_diversity(norm_sum: float, sum_norm: float) -> float:
    """Eq. (3): ``sum_k ||g_k|| / ||sum_k g_k||`` (inf when the sum vanishes, nan for no gradient)."""
    if sum_norm > 0:
        return norm_sum / sum_norm
    return math.nan if norm_sum == 0 else math.inf


def push_up_step(diversity: float, fl_min: int, strategy: str) -> int:
    """Eq. (4): how many fractional bits to add to ``FL_min``.

    With ``d = log Δs`` (natural log) if ``0 < Δs < inf``, else ``d = 1``: if ``d > 0``,
    ``s1 = max(ceil(1 / (d - 1)), 1)`` and ``s2 = max(min(32 d**2 - 1, 32) - FL_min, 1)``
    combine by ``strategy`` (min, the ceiling of their mean, or max); else 1.
    ``s1`` is capped at 32, and ``d = 1`` exactly (``1 / 0``) takes the cap.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    d = math.log(diversity) if 0 < diversity < math.inf else 1.0
    if not d > 0:
        return 1
    s1 = MAX_BITS if d == 1.0 else min(max(math.ceil(1.0 / (d - 1.0)), 1), MAX_BITS)
    s2 = max(math.ceil(min(32.0 * d * d - 1.0, 32.0)) - fl_min, 1)
    if strategy == "min":
        return min(s1, s2)
    if strategy == "max":
        return max(s1, s2)
    return math.ceil(0.5 * (s1 + s2))


def push_up(minimum: FixedPoint, diversity: float, strategy: str, buffer_bits: int) -> FixedPoint:
    """PushUp (Sec. 3.3): raise ``FL`` by :func:`push_up_step`, then add ``buffer_bits`` of range.

    ``FL = min(FL_min + s, 32 - buff)`` and ``WL = max(min(FL + buff, 32), WL_min)``.
    """
    if not 0 <= buffer_bits < MAX_BITS:
        raise ValueError(f"buffer bits must be 0-{MAX_BITS - 1}, not {buffer_bits!r}")
    step = push_up_step(diversity, minimum.fl, strategy)
    fl = min(minimum.fl + step, MAX_BITS - buffer_bits)
    wl = max(min(fl + buffer_bits, MAX_BITS), minimum.wl)
    return FixedPoint(max(wl, 1), fl)


def adapt_lookback(lookback: int, diversity: float, lower: int, upper: int, momentum: float) -> int:
    """Lookback with momentum: ``ceil(γ lb_new + (1 - γ) lb)``, ``lb_new = clip(ceil(lb_upr / Δs))``."""
    if 0 < diversity and not math.isnan(diversity):
        new = min(max(math.ceil(upper / diversity), lower), upper)
    else:
        new = upper
    return min(max(math.ceil(new * momentum + (1.0 - momentum) * lookback), lower), upper)


def adapt_resolution(resolution: int, lookback: int, lb_lower: int, lb_upper: int,
                     lower: int, upper: int) -> int:
    """Eq. (5): one bin more when the lookback sits at its upper bound, one fewer at its lower."""
    if lookback >= lb_upper:
        resolution += 1
    elif lookback <= lb_lower:
        resolution -= 1
    return min(max(resolution, lower), upper)


def adapt_strategy(strategy: str, average_loss: float, loss: float) -> str:
    """The loss-based rule: escalate min -> mean -> max while the loss is not below its average."""
    if abs(average_loss) > abs(loss):
        return "min"
    return {"min": "mean", "mean": "max", "max": "max"}[strategy]


class FixedPointQuantizer(Quantizer):
    """A layer's weights in ⟨WL, FL⟩: the forward pass uses a stored quantized copy.

    AdaPT keeps a float32 master copy (the layer's parameter, updated by SGD) and a
    quantized copy used by forward passes (Alg. 1). :meth:`requantize` writes the
    quantized copy by stochastic rounding of the master copy; ``forward`` returns
    it with the gradient passed straight through to the master copy. Until the
    first :meth:`requantize`, the forward pass quantizes on the fly.

    :meth:`integer_bits` is ``WL`` for every stored weight that is not exactly 0
    and 0 for those that are (a sparse format stores no bits for them), or the
    plain ``WL`` with ``sparse=False``.
    """

    def __init__(self, fmt: FixedPoint, sparse: bool = True):
        super().__init__()
        self.fmt = fmt
        self.sparse = bool(sparse)
        self.generator: torch.Generator | None = None
        self.register_buffer("quantized", torch.empty(0))

    @torch.no_grad()
    def requantize(self, weight: torch.Tensor) -> torch.Tensor:
        self.quantized = stochastic_round(weight.detach(), self.fmt, self.generator)
        return self.quantized

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.quantized
        if q.shape != w.shape:
            q = stochastic_round(w.detach(), self.fmt, self.generator)
        return q + (w - w.detach())  # straight through; the value is q, bit for bit

    def integer_form(self, w: torch.Tensor) -> AffineGrid:
        """Signed ``WL``-bit codes ``k`` of the stored copy, ``k * 2**-FL``; width 0 where ``k = 0`` if sparse."""
        if self.quantized.shape != w.shape:
            raise MpsearchError("this fixed-point quantizer has no stored quantized copy of the weights "
                                "yet (call requantize); its forward pass would round at random.")
        codes = torch.round(self.quantized.detach() * 2.0 ** self.fmt.fl).to(torch.int64).cpu()
        return AffineGrid(bits=torch.as_tensor(self.integer_bits()).to(torch.int64), codes=codes,
                          scale=2.0 ** -self.fmt.fl, zero_point=0, signed=True, value_shape=tuple(w.shape))

    def nonzero_share(self) -> float:
        """The paper's ``sp``: the share of stored weights that are not 0."""
        return float((self.quantized != 0).double().mean()) if self.quantized.numel() else 1.0

    def integer_bits(self) -> Bits:
        if not self.sparse or not self.quantized.numel() or bool((self.quantized != 0).all()):
            return self.fmt.wl
        return (self.quantized != 0).to(torch.int64).cpu() * self.fmt.wl

    def set_bits(self, bits: Bits) -> None:
        """Widen the word length to the legal width; FL is kept, so stored weights stay representable."""
        wl = bits if isinstance(bits, int) else int(torch.as_tensor(bits).max())
        if wl > self.fmt.wl:
            self.fmt = FixedPoint(wl, self.fmt.fl)

    def extra_repr(self) -> str:
        return f"format={self.fmt}, sparse={self.sparse}"
