"""The conformance suite every accelerator backend must pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.assignment import PrecisionAssignment
from mpsearch.backends import Backend
from mpsearch.errors import AssignmentError
from mpsearch.testing import tiny_profile
from mpsearch.testing.hypothesis import assignments, raised

PROFILE = tiny_profile()
# The plugin fixtures are stateless objects, so sharing them across examples (and across
# the subclasses that run these methods) is safe.
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]


def _max_bits(backend: Backend) -> int:
    widths = [w for w in (backend.weight_bits, backend.activation_bits) if w is not None]
    return min([max(w) for w in widths], default=32)


class BackendTestCase:
    """Subclass in a plugin's tests; provide the ``backend`` fixture and, for the
    hand-computed case, override :meth:`test_hand_computed_uniform_case`."""

    @pytest.fixture
    def backend(self) -> Backend:  # pragma: no cover - subclasses override
        raise NotImplementedError

    @settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_legalise_never_lowers_and_is_idempotent(self, backend: Backend, data):
        a = data.draw(assignments(PROFILE, max_bits=_max_bits(backend)))
        legal = backend.legalise(a)
        for group in a:
            assert torch.all(torch.as_tensor(legal[group]) >= torch.as_tensor(a[group]))
        assert backend.legalise(legal) == legal
        assert backend.is_legal(legal)

    def test_legal_widths_are_unchanged(self, backend: Backend):
        for kind in ("weight", "input"):
            widths = backend.supported("weight" if kind == "weight" else "input") or range(1, 33)
            for w in widths:
                a = PrecisionAssignment.uniform(PROFILE, w if kind == "weight" else _max_bits(backend),
                                                w if kind == "input" else _max_bits(backend))
                assert backend.legalise(a) == a

    def test_too_wide_is_an_error(self, backend: Backend):
        top = _max_bits(backend)
        if top >= 32:
            pytest.skip("backend takes every width")
        with pytest.raises(AssignmentError, match="exceeds"):
            backend.legalise(PrecisionAssignment.uniform(PROFILE, top + 1, top + 1))

    @settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_costs_are_monotone_in_bits(self, backend: Backend, data):
        a = backend.legalise(data.draw(assignments(PROFILE, max_bits=_max_bits(backend))))
        b = backend.legalise(data.draw(raised(a, max_bits=_max_bits(backend))))
        ca, cb = backend.layer_costs(PROFILE, a), backend.layer_costs(PROFILE, b)
        for column in ("time", "memory_bits"):
            assert cb[column].sum() >= ca[column].sum() - 1e-9
        assert (ca["baseline_time"] == cb["baseline_time"]).all()

    @settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_pruned_groups_stay_pruned(self, backend: Backend, data):
        a = data.draw(assignments(PROFILE, max_bits=_max_bits(backend)))
        legal = backend.legalise(a)
        for group in a:
            before, after = torch.as_tensor(a[group]), torch.as_tensor(legal[group])
            assert torch.equal(after == 0, before == 0)

    @settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_energy_is_monotone_in_bits(self, backend: Backend, data):
        a = backend.legalise(data.draw(assignments(PROFILE, max_bits=_max_bits(backend))))
        ca = backend.layer_costs(PROFILE, a)
        if "energy_pj" not in ca.columns:
            pytest.skip("backend has no energy model")
        b = backend.legalise(data.draw(raised(a, max_bits=_max_bits(backend))))
        cb = backend.layer_costs(PROFILE, b)
        assert cb["energy_pj"].sum() >= ca["energy_pj"].sum() * (1 - 1e-12)
        if "baseline_energy_pj" in ca.columns:
            assert (ca["baseline_energy_pj"] == cb["baseline_energy_pj"]).all()

    @settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_differentiable_costs_agree_at_legal_widths(self, backend: Backend, data):
        if not backend.has_differentiable_costs:
            pytest.skip("backend has no differentiable cost model")
        a = backend.legalise(data.draw(assignments(PROFILE, max_bits=_max_bits(backend))))
        frame = backend.layer_costs(PROFILE, a)
        totals = backend.differentiable_costs(PROFILE, a.as_tensors(torch.float32))
        for column in frame.columns:
            assert float(totals[column]) == pytest.approx(float(frame[column].sum()), rel=1e-5,
                                                          abs=1e-9)

    def test_differentiable_time_has_a_non_negative_gradient(self, backend: Backend):
        if not (backend.has_differentiable_costs and backend.time_depends_on_bits):
            pytest.skip("backend has no differentiable time that depends on the widths")
        widths = [w for w in (backend.activation_bits or range(1, 33)) if w > 1]
        a = backend.legalise(PrecisionAssignment.uniform(PROFILE, widths[0], widths[0]))
        bits = {g: t.float().requires_grad_() for g, t in a.as_tensors().items()}
        backend.differentiable_costs(PROFILE, bits)["time"].backward()
        grads = [bits[g].grad for g in bits if bits[g].grad is not None]
        assert all(bool((g >= 0).all()) for g in grads)
        assert sum(float(g.sum()) for g in grads) > 0

    def test_layer_costs_cover_every_layer(self, backend: Backend):
        costs = backend.layer_costs(PROFILE, backend.legalise(PrecisionAssignment.uniform(PROFILE, 8, 8)))
        assert list(costs.index) == PROFILE.names
        assert {"time", "baseline_time", "memory_bits", "baseline_memory_bits"} <= set(costs.columns)

    def test_hand_computed_uniform_case(self, backend: Backend):  # pragma: no cover
        pytest.fail("override with a uniform case whose speed-up you computed by hand")
