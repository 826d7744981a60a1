"""The ``energy`` objective: first-order energy per inference at batch 1, in µJ."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from mpsearch.plugins.objective_latency import BackendObjective

from mpsearch.backends import ENERGY_COLUMNS, Backend
from mpsearch.errors import MpsearchError
from mpsearch.hookspecs import hookimpl
from mpsearch.objectives import BitTensors

PJ_PER_UJ = 1e6


class Energy(BackendObjective):
    """Energy of one inference at batch 1 on the backend, in µJ: ``sum_l energy_pj_l / 10^6``.

    The backend's ``energy_pj`` column: multiplies by the bit-products its datapath
    computes, one accumulate per MAC, every stored weight bit read from DRAM and
    every input-activation bit from SRAM (Horowitz, ISSCC 2014 constants; see
    :func:`mpsearch.backends.energy_pj`). Absolute rather than relative, because
    energies of different backends share the constants; the backend's
    :meth:`~mpsearch.backends.Backend.energy_ratio` gives it against its baseline.
    Bound and unbound forms as :class:`~mpsearch.plugins.objective_latency.BackendObjective`.

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


@hookimpl
def register_objectives(register):
    register("energy", Energy())
