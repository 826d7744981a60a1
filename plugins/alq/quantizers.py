"""ALQ's multi-bit quantization (Qu et al., "Adaptive Loss-aware Quantization for Multi-bit Networks", CVPR 2020).

A layer's weights are cut into disjoint groups of ``n`` weights (:class:`Grouping`);
each group is ``w_g ~ B_g alpha_g`` with binary bases ``B_g`` in ``{-1, +1}^(n x I_g)``
and positive coordinates ``alpha_g``; the group's bit-width is its number of
bases ``I_g`` (0: the group is removed). The pieces here are the paper's maths,
free of any training loop:

- :func:`sketch`: structured sketching (Alg. 1), greedy residual bases with
  least-squares coordinates.
- :class:`AMSGradState`: the first and (maximum) second momenta whose
  ``g = a m`` and ``H = sqrt(v_hat)`` make the quadratic model of the loss (Eq. 10).
- :func:`prune_increment` (Eq. 13) and :func:`select_for_pruning` (Alg. 2's
  per-layer top-k and global re-sort).
- :func:`search_bases` (Eq. 19-20, exhaustive over the ``2^I`` sign patterns per
  row) and :func:`closed_form_alpha` (Eq. 23 with ``lambda I``).
- :func:`flip_negative`: a negative coordinate flips its basis (``w_hat`` unchanged).
- :class:`ALQWeightQuantizer`: a layer's bases and coordinates as a quantizer
  whose forward is ``w_hat = B alpha`` (the float weight is not used).
- :class:`MultiBitActivationQuantizer`: ``x_hat = x_ref + D gamma`` (Eq. 24).
- :func:`storage_bits`: Eq. 26's storage plus the table of ``I_g``.

Inactive coordinate slots (pruned, or beyond a group's ``I_g``) hold ``alpha = 0``
and are masked out; ``mask.sum(1)`` is ``I_g``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.api import BinaryGrid, Bits, LevelsGrid, MpsearchError, Quantizer

MIN_GROUP, MAX_GROUP = 32, 512  # Sec. 5.1: group sizes that trade error against storage well
CONV_STRUCTURES = ("auto", "pixel", "kernel", "channel")
COORDINATE_BITS = 32  # each alpha is a float32 (Eq. 26)
RIDGE = 1e-6  # Eq. 23's lambda


# -- grouping -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """How a weight tensor is cut into equal groups: a view of it as a ``(G, n)`` matrix.

    ``structure`` is ``"channel"`` (``w[c]``), ``"kernel"`` (``w[c, d]``, convolutions),
    ``"pixel"`` (``w[c, :, h, w]``, convolutions) or ``"subchannel"`` (each
    channel's row cut into ``slices`` equal contiguous parts).
    """

    structure: str
    slices: int = 1

    def shape(self, weight_shape: Sequence[int]) -> tuple[int, int]:
        """``(G, n)`` for a weight of ``weight_shape``."""
        out = int(weight_shape[0])
        numel = math.prod(weight_shape)
        if self.structure == "channel":
            return out, numel // out
        if self.structure == "subchannel":
            return out * self.slices, numel // (out * self.slices)
        if len(weight_shape) != 4:
            raise MpsearchError(f"{self.structure}-wise groups need a convolution's weight, not "
                                f"shape {list(weight_shape)}.")
        _, cin, kh, kw = weight_shape
        if self.structure == "kernel":
            return out * cin, kh * kw
        return out * kh * kw, cin  # pixel

    def to_groups(self, w: torch.Tensor) -> torch.Tensor:
        """The ``(G, n)`` matrix of ``w``'s groups (a copy for pixel-wise groups)."""
        if self.structure == "pixel":
            return w.permute(0, 2, 3, 1).reshape(self.shape(w.shape))
        return w.reshape(self.shape(w.shape))

    def from_groups(self, groups: torch.Tensor, weight_shape: Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`to_groups`."""
        if self.structure == "pixel":
            o, cin, kh, kw = weight_shape
            return groups.reshape(o, kh, kw, cin).permute(0, 3, 1, 2)
        return groups.reshape(tuple(weight_shape))

    def __str__(self) -> str:
        return f"subchannel({self.slices})" if self.structure == "subchannel" else self.structure


def _in_range(n: int) -> bool:
    return MIN_GROUP <= n <= MAX_GROUP


def _sliced(row: int) -> Grouping | None:
    """The fewest equal slices of a row of ``row`` weights that are at most MAX_GROUP long."""
    for k in range(2, row + 1):
        if row % k == 0 and row // k <= MAX_GROUP:
            return Grouping("subchannel", k) if row // k >= MIN_GROUP else None
    return None


def choose_grouping(weight_shape: Sequence[int], structure: str = "auto") -> Grouping:
    """The group structure of one layer (Sec. 5.1, App. A.2).

    Fully connected layers (2-d weights) always get the paper's structures for
    them: channel-wise when a row has at most 512 weights, else sub-channel-wise
    with the fewest equal slices of 32-512 weights. Convolutions take
    ``structure``; ``"auto"`` picks the paper's preferred pixel-wise, then
    kernel-wise, then channel-wise, the first whose group size lies in 32-512,
    then a channel sliced into 32-512; where none does, the structure of the
    largest groups (earlier ones win ties).

    Raises:
        MpsearchError: an unknown structure.
    """
    shape = tuple(int(s) for s in weight_shape)
    if structure not in CONV_STRUCTURES:
        raise MpsearchError(f"unknown ALQ group structure {structure!r}; choose one of "
                            f"{', '.join(CONV_STRUCTURES)}.")
    row = math.prod(shape[1:])
    if len(shape) != 4:
        if row <= MAX_GROUP:
            return Grouping("channel")
        return _sliced(row) or Grouping("channel")
    if structure != "auto":
        return Grouping(structure)
    options = [Grouping(s) for s in ("pixel", "kernel", "channel")]
    for g in options:
        if _in_range(g.shape(shape)[1]):
            return g
    if row > MAX_GROUP and (sliced := _sliced(row)) is not None:
        return sliced
    return max(options, key=lambda g: (g.shape(shape)[1] if g.shape(shape)[1] <= MAX_GROUP else -1))


# -- sketching (Alg. 1) -------------------------------------------------------------------------


def _sign(x: torch.Tensor) -> torch.Tensor:
    """``sign`` with ``sign(0) = +1``: a basis has no zero entries."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def flip_negative(bases: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Make every coordinate non-negative by flipping its basis; ``B alpha`` is unchanged.

    Args:
        bases: ``(G, n, I)``, changed in place.
        alpha: ``(G, I)``, changed in place.

    Returns:
        The ``(G, I)`` sign (``-1`` where a coordinate was flipped).
    """
    sign = _sign(alpha)
    bases.mul_(sign.unsqueeze(1).to(bases.dtype))
    alpha.abs_()
    return sign


def sketch(w: torch.Tensor, i_max: int, sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Structured sketching (Alg. 1) of every group (row) of ``w`` at once.

    Each step adds ``beta_i = sign(eps)`` of the residual and refits all
    coordinates by least squares, ``alpha = (B^T B)^-1 B^T w``, until
    ``I_max`` bases or a relative squared error ``||eps||^2 / ||w||^2 <= sigma``.
    A group whose residual vanishes stops early (an all-zero group gets no basis).
    Coordinates come out non-negative (:func:`flip_negative`).

    Args:
        w: ``(G, n)`` groups.

    Returns:
        ``bases`` ``(G, n, i_max)`` of +-1, ``alpha`` ``(G, i_max)`` (0 in unused
        slots) and ``mask`` ``(G, i_max)`` (True where a basis is used).
    """
    if i_max < 1:
        raise ValueError("i_max must be at least 1")
    w64 = w.detach().to(torch.float64)
    groups, n = w64.shape
    bases = torch.ones(groups, n, i_max, dtype=torch.float64, device=w.device)
    alpha = torch.zeros(groups, i_max, dtype=torch.float64, device=w.device)
    mask = torch.zeros(groups, i_max, dtype=torch.bool, device=w.device)
    norm2 = (w64 * w64).sum(1)
    residual = w64.clone()
    for i in range(i_max):
        err2 = (residual * residual).sum(1)
        # a residual at rounding level is zero: its sign would repeat a basis already in the span
        grow = (err2 > sigma * norm2) & (err2 > 1e-20 * norm2.clamp_min(1e-300))
        if not bool(grow.any()):
            break
        bases[grow, :, i] = _sign(residual[grow])
        mask[grow, i] = True
        b = bases[grow, :, : i + 1]
        gram = b.transpose(1, 2) @ b
        rhs = (b.transpose(1, 2) @ w64[grow].unsqueeze(2)).squeeze(2)
        alpha[grow, : i + 1] = torch.linalg.solve(gram, rhs)
        residual[grow] = w64[grow] - (b @ alpha[grow, : i + 1].unsqueeze(2)).squeeze(2)
    flip_negative(bases, alpha)
    return bases.to(w.dtype), alpha.to(w.dtype), mask


# -- the quadratic model (Eq. 10) ---------------------------------------------------------------


class AMSGradState:
    """AMSGrad's momenta of one tensor; ``g = a m_hat`` and ``H = sqrt(v_hat)`` of Eq. 10.

    The step ``x - g / H`` is AMSGrad's update (Reddi et al. 2018). ``v_hat`` is
    the running maximum of the second momentum, both bias-corrected as PyTorch's
    AMSGrad does; ``eps`` keeps ``H`` positive where a gradient was always 0.
    """

    def __init__(self, like: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.v_max = torch.zeros_like(like)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0

    def update(self, grad: torch.Tensor) -> None:
        self.t += 1
        self.m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        torch.maximum(self.v_max, self.v, out=self.v_max)

    def g(self, lr: float) -> torch.Tensor:
        """``a m_hat``: the linear term of the quadratic model."""
        return lr * self.m / (1 - self.beta1 ** max(self.t, 1))

    def h(self) -> torch.Tensor:
        """``sqrt(v_hat)``: the diagonal of the quadratic term."""
        return (self.v_max / (1 - self.beta2 ** max(self.t, 1))).sqrt() + self.eps


def prune_increment(g: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 13: the modelled loss increase of setting each coordinate to 0, ``-g a + H a^2 / 2``."""
    return -g * alpha + 0.5 * h * alpha * alpha


def select_for_pruning(scores: Sequence[torch.Tensor], costs: Sequence[float], remove_bits: float,
                       top_fraction: float, keep: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Alg. 2's choice of coordinates to remove in one iteration.

    Each layer's scores (Eq. 13; ``inf`` for inactive slots) are sorted and its
    lowest ``top_fraction`` (at least one) kept as candidates; the candidates of
    all layers are re-sorted and removed in ascending order until the removed
    coordinates account for ``remove_bits`` (each costs its layer's group size
    in ``costs``). With equal costs ``c`` this removes exactly
    ``ceil(remove_bits / c)`` coordinates, the paper's ``M_p``. A layer never
    loses its last ``keep`` coordinates (default 1). Candidates that run out
    before the quota are topped up from a global sort of all coordinates.

    Returns:
        Per layer, the flat indices (into its score tensor) to remove.
    """
    keep = [1] * len(scores) if keep is None else list(keep)
    flat = [s.reshape(-1) for s in scores]
    active = [int(torch.isfinite(f).sum()) for f in flat]
    chosen: list[list[int]] = [[] for _ in flat]
    removed = 0.0

    def take(pool: list[tuple[float, int, int]]) -> None:
        nonlocal removed
        for score, layer, index in sorted(pool):
            if removed >= remove_bits - 1e-9:
                return
            if active[layer] - len(chosen[layer]) <= keep[layer]:
                continue
            chosen[layer].append(index)
            removed += costs[layer]

    def pool_of(limit_of) -> list[tuple[float, int, int]]:
        pool = []
        for layer, f in enumerate(flat):
            if active[layer] == 0:
                continue
            k = min(active[layer], limit_of(active[layer]))
            values, order = torch.sort(f, stable=True)
            taken = set(chosen[layer])
            pool.extend((float(v), layer, int(i)) for v, i in zip(values[:k].tolist(), order[:k].tolist())
                        if int(i) not in taken)
        return pool

    if remove_bits > 0:
        take(pool_of(lambda card: max(1, math.ceil(top_fraction * card))))
        if removed < remove_bits - 1e-9:
            take(pool_of(lambda card: card))
    return [torch.tensor(sorted(c), dtype=torch.int64) for c in chosen]


# -- step 2: bases (Eq. 19-20) and coordinates (Eq. 23) ----------------------------------------


def sign_patterns(bits: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """All ``2^bits`` rows ``b`` in ``{-1, +1}^bits`` (row ``k``: the binary digits of ``k``)."""
    k = torch.arange(2**bits, device=device).unsqueeze(1)
    digits = (k >> torch.arange(bits, device=device)) & 1
    return (2 * digits - 1).to(dtype)


def search_bases(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 19-20: per row ``j`` of every group, the ``b`` minimising ``|b^T alpha_g - target_j|``.

    All ``2^I`` values ``b^T alpha_g`` (Eq. 20) are sorted per group and each
    target finds its nearest by binary search.

    Args:
        alpha: ``(G, I)`` coordinates (0 in inactive slots).
        target: ``(G, n)``, ``w_hat - g / H`` (the AMSGrad step, Eq. 19).

    Returns:
        ``(G, n, I)`` bases of +-1.
    """
    patterns = sign_patterns(alpha.shape[1], alpha.dtype, alpha.device)
    values = alpha @ patterns.T  # (G, 2^I)
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    hi = torch.searchsorted(sorted_values, target.contiguous()).clamp(max=values.shape[1] - 1)
    lo = (hi - 1).clamp(min=0)
    pick_lo = (target - sorted_values.gather(1, lo)).abs() <= (sorted_values.gather(1, hi) - target).abs()
    best = torch.where(pick_lo, lo, hi)
    return patterns[order.gather(1, best)]


def closed_form_alpha(new_bases: torch.Tensor, w_hat: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                      mask: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Eq. 23: the coordinates minimising the quadratic model over ``span(B_new)``.

    ``alpha = -(B^T H B + lambda I)^-1 B^T (g - H w_hat)`` per group, with
    ``w_hat = B_old alpha_old`` the current weights; inactive slots stay 0.

    Args:
        new_bases: ``(G, n, I)``; w_hat, g, h: ``(G, n)``; mask: ``(G, I)``.
    """
    b = new_bases.to(torch.float64)
    m = mask.to(torch.float64)
    hh = h.to(torch.float64)
    gram = torch.einsum("gni,gn,gnj->gij", b, hh, b)
    gram = gram * m.unsqueeze(1) * m.unsqueeze(2) + torch.diag_embed(1.0 - m)
    gram = gram + ridge * torch.eye(b.shape[2], dtype=torch.float64, device=b.device)
    rhs = torch.einsum("gni,gn->gi", b, hh * w_hat.to(torch.float64) - g.to(torch.float64)) * m
    return torch.linalg.solve(gram, rhs).to(w_hat.dtype)


def quadratic_model(w: torch.Tensor, w_hat: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Eq. 10 per group: ``g^T (w - w_hat) + (w - w_hat)^T H (w - w_hat) / 2``, shape ``(G,)``."""
    d = w - w_hat
    return (g * d).sum(-1) + 0.5 * (h * d * d).sum(-1)


# -- storage (Eq. 26) ---------------------------------------------------------------------------


def table_bits(i_max: int) -> int:
    """Bits of one entry of the table of ``I_g`` (0..i_max)."""
    return max(1, math.ceil(math.log2(i_max + 1)))


def storage_bits(widths: torch.Tensor, group_size: int, i_max: int) -> int:
    """Eq. 26's denominator for one layer plus the table of ``I_g``.

    ``sum_g I_g n`` bits of bases, ``32 sum_g I_g`` of coordinates and
    ``G * table_bits(i_max)`` for the look-up table of every group's width.
    """
    total = int(widths.sum())
    return total * group_size + COORDINATE_BITS * total + widths.numel() * table_bits(i_max)


# -- modules ------------------------------------------------------------------------------------


class ALQWeightQuantizer(Quantizer):
    """One layer's ALQ weights: ``w_hat_g = B_g alpha_g`` for every group.

    ``forward`` ignores the float weight it is handed and returns ``w_hat``.
    In ``capture`` mode (optimising bases, Alg. 3) ``w_hat`` is a leaf whose
    gradient is kept in :attr:`w_hat` for the step; otherwise it is a function
    of :attr:`alpha`, which then receives Eq. 14's gradient ``B^T dl/dw_hat``.

    ``integer_bits`` is every weight's group width (the weight's own shape,
    0 where a group is removed); ``scale_bits`` the coordinates and the table of
    ``I_g`` (Eq. 26).
    """

    def __init__(self, weight: torch.Tensor, grouping: Grouping, i_max: int, sigma: float = 0.0):
        super().__init__()
        self.grouping = grouping
        self.weight_shape = tuple(weight.shape)
        self.i_max = int(i_max)
        bases, alpha, mask = sketch(grouping.to_groups(weight.detach()), self.i_max, sigma)
        self.register_buffer("bases", bases.to(torch.int8))
        self.register_buffer("mask", mask)
        self.alpha = nn.Parameter(alpha)
        self.capture = False
        self.w_hat: torch.Tensor | None = None
        self.alpha_state: AMSGradState | None = None
        self.w_state: AMSGradState | None = None

    @property
    def group_size(self) -> int:
        return self.bases.shape[1]

    def groups(self) -> torch.Tensor:
        """``w_hat`` as ``(G, n)``."""
        return torch.einsum("gni,gi->gn", self.bases.to(self.alpha.dtype), self.alpha)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.capture:
            self.w_hat = self.groups().detach().requires_grad_(True)
            return self.grouping.from_groups(self.w_hat, self.weight_shape)
        return self.grouping.from_groups(self.groups(), self.weight_shape)

    def group_widths(self) -> torch.Tensor:
        """``I_g`` per group, ``(G,)``."""
        return self.mask.sum(1)

    def integer_bits(self) -> Bits:
        per_weight = self.group_widths().unsqueeze(1).expand(-1, self.group_size)
        return self.grouping.from_groups(per_weight, self.weight_shape).to("cpu", torch.int64).contiguous()

    def scale_bits(self) -> int:
        return storage_bits(self.group_widths(), self.group_size, self.i_max) - int(self.group_widths().sum()) * self.group_size

    def integer_form(self, w: torch.Tensor) -> BinaryGrid:
        """The bases (``+-1``), which of them each group uses, and their coordinates."""
        o = self.weight_shape[0]
        if self.grouping.structure == "pixel":
            _, cin, kh, kw = self.weight_shape
            view, perm = (o, kh, kw, cin), (0, 3, 1, 2)
        else:
            view, perm = self.weight_shape, tuple(range(len(self.weight_shape)))
        return BinaryGrid(bits=self.integer_bits(), codes=self.bases.detach().to("cpu", torch.int64),
                          mask=self.mask.detach().cpu(), alpha=self.alpha.detach().cpu(),
                          view=tuple(view), perm=perm)

    def storage_bits(self) -> int:
        return storage_bits(self.group_widths(), self.group_size, self.i_max)

    # -- the steps -------------------------------------------------------------------------

    def observe_alpha(self, l2: float = 0.0) -> None:
        """Update the coordinates' AMSGrad momenta from ``alpha.grad`` (+ L2 on alpha)."""
        grad = self.alpha.grad
        if grad is None:
            grad = torch.zeros_like(self.alpha)
        grad = (grad + l2 * self.alpha.detach()) * self.mask
        if self.alpha_state is None:
            self.alpha_state = AMSGradState(self.alpha.detach())
        self.alpha_state.update(grad)

    def prune_scores(self, lr: float) -> torch.Tensor:
        """Eq. 13 for every active coordinate, ``inf`` elsewhere (needs :meth:`observe_alpha`)."""
        s = self.alpha_state
        f = prune_increment(s.g(lr), s.h(), self.alpha.detach())
        return torch.where(self.mask, f, torch.full_like(f, math.inf))

    @torch.no_grad()
    def remove(self, flat_indices: torch.Tensor) -> None:
        """Remove coordinates (and their bases) by flat index into ``(G, I)``."""
        if flat_indices.numel():
            self.mask.view(-1)[flat_indices.to(self.mask.device)] = False
            self.alpha.view(-1)[flat_indices.to(self.alpha.device)] = 0.0

    @torch.no_grad()
    def coordinate_step(self, lr: float, l2: float) -> None:
        """Eq. 21: an AMSGrad step on alpha with L2; negative coordinates flip their bases."""
        self.observe_alpha(l2)
        s = self.alpha_state
        self.alpha.sub_(s.g(lr) / s.h())
        self.alpha.mul_(self.mask)
        self._flip()

    @torch.no_grad()
    def bases_step(self, lr: float) -> None:
        """Alg. 3: Eq. 19-20 for the bases from ``dl/dw_hat``, then Eq. 23 for the coordinates."""
        w_hat = self.w_hat.detach()
        grad = self.w_hat.grad if self.w_hat.grad is not None else torch.zeros_like(w_hat)
        if self.w_state is None:
            self.w_state = AMSGradState(w_hat)
        self.w_state.update(grad)
        g, h = self.w_state.g(lr), self.w_state.h()
        new = search_bases(self.alpha.detach(), w_hat - g / h)
        alpha = closed_form_alpha(new, w_hat, g, h, self.mask)
        self.bases.copy_(new.to(torch.int8))
        self.alpha.copy_(alpha * self.mask)
        self._flip()
        self.alpha_state = None  # new bases: the coordinates' momenta start again

    def _flip(self) -> None:
        bases = self.bases.to(self.alpha.dtype)
        sign = flip_negative(bases, self.alpha.data)
        self.bases.copy_(bases.to(torch.int8))
        if self.alpha_state is not None:
            self.alpha_state.m.mul_(sign)

    def set_bits(self, bits: Bits) -> None:
        """Widen groups to the legal widths (one width per group: its weights share their bases)."""
        per_weight = (torch.full(self.weight_shape, bits) if isinstance(bits, int)
                      else torch.as_tensor(bits).expand(self.weight_shape))
        widths = self.grouping.to_groups(per_weight)[:, 0].to(self.mask.device)
        if not torch.equal(widths, self.group_widths()):
            self.widen(widths)

    @torch.no_grad()
    def widen(self, widths: torch.Tensor) -> None:
        """Give every group ``widths[g] >= I_g`` bases; new ones start at ``alpha = 0``.

        A new basis is ``-sign`` of the weights' first momentum (the descent
        direction the next coordinate step grows along), ``+1`` without one.
        """
        widths = widths.to(self.mask.device)
        need = int(widths.max()) if widths.numel() else 0
        if need > self.mask.shape[1]:
            extra = need - self.mask.shape[1]
            g, n, _ = self.bases.shape
            self.bases = torch.cat([self.bases, torch.ones(g, n, extra, dtype=torch.int8,
                                                           device=self.bases.device)], 2)
            self.mask = torch.cat([self.mask, torch.zeros(g, extra, dtype=torch.bool,
                                                          device=self.mask.device)], 1)
            self.alpha = nn.Parameter(torch.cat([self.alpha.detach(), self.alpha.new_zeros(g, extra)], 1))
            self.i_max = self.mask.shape[1]
            self.alpha_state = None
        direction = (-_sign(self.w_state.m) if self.w_state is not None
                     else torch.ones(self.bases.shape[:2], device=self.bases.device))
        for g in torch.nonzero(self.group_widths() < widths).flatten().tolist():
            free = torch.nonzero(~self.mask[g]).flatten()[: int(widths[g]) - int(self.group_widths()[g])]
            self.bases[g][:, free] = direction[g].to(torch.int8).unsqueeze(1)
            self.mask[g, free] = True
            self.alpha[g, free] = 0.0

    def extra_repr(self) -> str:
        g, n, i = self.bases.shape
        return f"{self.grouping}, groups={g}, n={n}, i_max={i}"


class MultiBitActivationQuantizer(Quantizer):
    """Eq. 24: ``x_hat = x_ref + D gamma`` with ``D`` in ``{-1, +1}``, one ``x_ref`` and ``gamma`` per layer.

    Each value goes to the nearest of the ``2^I`` levels ``x_ref + b^T gamma``
    (binary search over the sorted levels). In training, every batch refits
    ``(x_ref, gamma)`` by least squares on its own encoding (the statistical
    reconstruction error) and the running values move toward the fit with
    ``momentum``; the first batch initialises them by greedy residual
    sketching (refined ``refine`` times). Gradients pass straight through inside the levels' range and
    are 0 outside it (the clipped straight-through estimate of PACT, which the
    paper's activation quantizer follows).
    """

    def __init__(self, bits: int, momentum: float = 0.1, refine: int = 5):
        super().__init__()
        if bits < 1:
            raise ValueError("activation bits must be at least 1")
        self.bits = int(bits)
        self.momentum = float(momentum)
        self.refine = int(refine)
        self.register_buffer("x_ref", torch.zeros(()))
        self.register_buffer("gamma", torch.zeros(self.bits))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("patterns", sign_patterns(self.bits), persistent=False)
        self._calibrated = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.calibrated)

    def levels(self, x_ref: torch.Tensor | None = None, gamma: torch.Tensor | None = None):
        """Sorted levels and their sign patterns."""
        x_ref = self.x_ref if x_ref is None else x_ref
        gamma = self.gamma if gamma is None else gamma
        values = x_ref + self.patterns @ gamma
        values, order = torch.sort(values)
        return values, self.patterns[order]

    def encode(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Index of the nearest level of every value."""
        mids = (values[1:] + values[:-1]) / 2
        return torch.bucketize(x, mids)

    @torch.no_grad()
    def _fit(self, x: torch.Tensor, x_ref: torch.Tensor, gamma: torch.Tensor, rounds: int = 1):
        """Least-squares ``(x_ref, gamma)`` for ``x``'s encoding, alternated ``rounds`` times."""
        flat = x.reshape(-1).to(torch.float64)
        for _ in range(rounds):
            values, patterns = self.levels(x_ref, gamma)
            idx = self.encode(flat.to(values.dtype), values)
            counts = torch.bincount(idx, minlength=values.numel()).to(torch.float64)
            sums = torch.bincount(idx, weights=flat, minlength=values.numel())
            p = torch.cat([torch.ones_like(patterns[:, :1]), patterns], 1).to(torch.float64)
            gram = (p.T * counts) @ p
            gram = gram + 1e-9 * (gram.diagonal().sum() + 1) * torch.eye(p.shape[1], dtype=torch.float64,
                                                                          device=p.device)
            sol = torch.linalg.solve(gram, p.T @ sums)
            x_ref = sol[0].to(x.dtype)
            gamma = torch.sort(sol[1:].abs(), descending=True).values.to(x.dtype)
        return x_ref, gamma

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor) -> None:
        x_ref = x.mean()
        residual = x - x_ref
        gamma = torch.empty(self.bits, dtype=x.dtype, device=x.device)
        for i in range(self.bits):
            gamma[i] = residual.abs().mean()
            residual = residual - gamma[i] * _sign(residual)
        x_ref, gamma = self._fit(x, x_ref, gamma, self.refine)
        self.x_ref.copy_(x_ref)
        self.gamma.copy_(gamma)
        self.calibrated.fill_(True)
        self._calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if not self._calibrated:
                self._calibrate(x.detach())
            else:
                with torch.no_grad():
                    x_ref, gamma = self._fit(x.detach(), self.x_ref, self.gamma)
                    self.x_ref.lerp_(x_ref, self.momentum)
                    self.gamma.lerp_(gamma, self.momentum)
        values, _ = self.levels()
        q = values[self.encode(x.detach(), values)]
        inside = (x >= values[0]) & (x <= values[-1])
        # straight through inside the levels' range; x - x is exactly 0, so the value is q itself
        return q + torch.where(inside, x - x.detach(), torch.zeros_like(x))

    def integer_form(self, x: torch.Tensor) -> LevelsGrid:
        """Each value's index into the sorted levels ``x_ref + b^T gamma`` (eval mode: no refit)."""
        values, _ = self.levels()
        return LevelsGrid(bits=torch.tensor(self.bits), levels=values.detach().cpu()).encode(x)

    def integer_bits(self) -> Bits:
        return self.bits

    def scale_bits(self) -> int:
        return COORDINATE_BITS * (self.bits + 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
