"""The cost objectives every backend offers: latency and energy, read off the backend's model.

``latency`` and ``energy`` evaluate on the study's backend. Every registered backend
also offers ``latency@<name>`` and ``energy@<name>``, bound to it (:func:`cost_objectives`):
the plugin host registers them, so a backend plugin registers only its backend.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpsearch.backends import ENERGY_COLUMNS, Backend
from mpsearch.errors import AssignmentError, MpsearchError
from mpsearch.objectives import BitTensors, Objective

PJ_PER_UJ = 1e6


class BackendObjective(Objective):
    """An objective read off a backend's model: the study's backend, or one bound by name.

    ``latency`` and ``energy`` (unbound) evaluate on the backend the host passes,
    the study's. They have no differentiable form, because
    :meth:`~mpsearch.objectives.Objective.differentiable` is not given a backend;
    ``latency@<backend>`` / ``energy@<backend>`` are bound to one backend (its
    plugin registers them) and give gradient strategies (BitPruning's criterion,
    FracBits' target, SMOL's criterion) the backend's pre-legalisation model in
    fractional widths. :meth:`for_backend` binds an objective to a backend.

    Evaluation: given a backend (the host's call), the assignment is legalised for
    the objective's backend, a no-op on the study's own legal assignment; given
    none, the widths are taken as they are (the pre-legalisation model, which is
    what the differentiable form computes, so the two agree at integer widths).
    """

    quantity = ""  # "latency" or "energy"
    summary = ""  # the description, before the backend it is on

    def __init__(self, backend: Backend | None = None, backend_name: str | None = None):
        self.backend = backend
        self.backend_name = backend_name
        self.has_differentiable = bool(backend is not None and backend.has_differentiable_costs
                                       and self._differentiable_on(backend))
        on = f"backend {backend_name!r}" if backend_name else "the study's backend"
        self.description = f"{self.summary}, on {on}"

    @property
    def name(self) -> str:
        return f"{self.quantity}@{self.backend_name}" if self.backend_name else self.quantity

    def _differentiable_on(self, backend: Backend) -> bool:
        return True

    def for_backend(self, backend: Backend, backend_name: str | None = None) -> BackendObjective:
        """This objective bound to ``backend`` (so that it has a differentiable form);
        one already bound to a backend is returned as it is."""
        if self.backend is not None:
            return self
        return type(self)(backend, backend_name or type(backend).__name__)

    def _target(self, backend: Backend | None) -> Backend:
        target = self.backend or backend
        if target is None:
            raise MpsearchError(f"objective {self.name!r} is evaluated on the study's backend, and none "
                                f"was given; pass one, or name {self.quantity}@<backend>.")
        return target

    def _totals(self, profile, bits: BitTensors) -> dict[str, torch.Tensor]:
        if not self.has_differentiable:
            hint = (f"name {self.quantity}@<backend> (bound to one backend) instead"
                    if self.backend is None else "this backend's cost does not change with the widths")
            raise MpsearchError(f"objective {self.name!r} has no differentiable form; {hint}.")
        return self.backend.differentiable_costs(profile, bits)

    def _frame(self, profile, assignment, backend: Backend | None):
        target = self._target(backend)
        if backend is not None:
            try:
                assignment = target.legalise(assignment)
            except AssignmentError as exc:  # a width the bound backend cannot run
                raise AssignmentError(f"objective {self.name!r}: {exc}") from None
        return target.layer_costs(profile, assignment)


class Latency(BackendObjective):
    """Latency per inference at batch 1, relative to the backend's own baseline.

    ``sum_l time_l / sum_l baseline_time_l`` from the backend's per-layer model:
    1.0 is the baseline the backend states (e.g. the same accelerator at 16 bits),
    0.25 runs in a quarter of its time; the reciprocal of :meth:`Backend.speedup`.
    A ratio rather than cycles, because the backends' first-order models fix
    throughput per MAC, not array sizes or utilisation, and a ratio compares
    across backends. Minimised.
    """

    unit = "x baseline"
    quantity = "latency"
    summary = "latency at batch 1 relative to the backend's baseline (sum time / sum baseline time)"

    def _differentiable_on(self, backend: Backend) -> bool:
        return backend.time_depends_on_bits

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        del scale_bits  # the timing models read the values' widths only
        totals = self._totals(profile, bits)
        return totals["time"] / totals["baseline_time"]

    def evaluate(self, profile, assignment, backend: Backend | None = None) -> float:
        costs = self._frame(profile, assignment, backend)
        return float(costs["time"].sum() / costs["baseline_time"].sum())


class Energy(BackendObjective):
    """Energy of one inference at batch 1 on the backend, in µJ: ``sum_l energy_pj_l / 10^6``.

    The backend's ``energy_pj`` column: multiplies by the bit-products its datapath
    computes, one accumulate per MAC, every stored weight bit read from DRAM and
    every input-activation bit from SRAM (Horowitz, ISSCC 2014 constants; see
    :func:`mpsearch.backends.energy_pj`). Absolute rather than relative, because
    energies of different backends share the constants; the backend's
    :meth:`~mpsearch.backends.Backend.energy_ratio` gives it against its baseline.
    Bound and unbound forms as :class:`BackendObjective`.

    Raises:
        MpsearchError: the backend has no energy model.
    """

    unit = "uJ"
    quantity = "energy"
    summary = "first-order energy per inference at batch 1 (Horowitz ISSCC 2014), uJ"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        del scale_bits
        return self._totals(profile, bits)["energy_pj"] / PJ_PER_UJ

    def evaluate(self, profile, assignment, backend: Backend | None = None) -> float:
        costs = self._frame(profile, assignment, backend)
        if ENERGY_COLUMNS[0] not in costs.columns:
            raise MpsearchError(f"objective {self.name!r}: backend {type(self._target(backend)).__name__} "
                                f"has no energy model (no energy_pj column); choose another backend.")
        return float(costs["energy_pj"].sum() / PJ_PER_UJ)


def cost_objectives(name: str, backend: Backend) -> dict[str, BackendObjective]:
    """``latency@<name>`` and ``energy@<name>``: the cost objectives bound to ``backend``.

    The plugin host registers them for every backend a plugin registers, under that
    plugin's name, so that gradient strategies can optimise the backend's model in
    fractional widths (see :class:`BackendObjective`).
    """
    return {f"latency@{name}": Latency(backend, name), f"energy@{name}": Energy(backend, name)}
