"""The conformance suite every cost objective must pass."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.assignment import PrecisionAssignment
from mpsearch.objectives import Objective
from mpsearch.testing import tiny_profile
from mpsearch.testing.hypothesis import assignments, raised

PROFILE = tiny_profile()
# The plugin fixtures are stateless objects, so sharing them across examples (and across
# the subclasses that run these methods) is safe.
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]


class ObjectiveTestCase:
    """Subclass in a plugin's tests and provide the ``objective`` fixture.

    Example::

        class TestMyObjective(ObjectiveTestCase):
            @pytest.fixture
            def objective(self):
                return MyObjective()
    """

    @pytest.fixture
    def objective(self) -> Objective:  # pragma: no cover - subclasses override
        raise NotImplementedError

    def test_declares_unit_and_direction(self, objective: Objective):
        assert isinstance(objective, Objective)
        assert objective.unit
        assert objective.direction in ("minimize", "maximize")

    @settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_non_decreasing_in_every_group(self, objective: Objective, data):
        a = data.draw(assignments(PROFILE))
        b = data.draw(raised(a))
        assert objective.evaluate(PROFILE, b) >= objective.evaluate(PROFILE, a) - 1e-12

    @settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_differentiable_form_agrees_at_integer_bits(self, objective: Objective, data):
        if not objective.has_differentiable:
            pytest.skip("objective has no differentiable form")
        a = data.draw(assignments(PROFILE))
        scale = {g: a.scale_bits(g) for g in a}
        fractional = objective.differentiable(PROFILE, a.as_tensors(torch.float32), scale)
        assert fractional.dim() == 0
        assert math.isclose(float(fractional), objective.evaluate(PROFILE, a), rel_tol=1e-5,
                            abs_tol=1e-12)

    def test_gradient_reaches_the_widths_and_is_non_negative(self, objective: Objective):
        if not objective.has_differentiable:
            pytest.skip("objective has no differentiable form")
        uniform = PrecisionAssignment.uniform(PROFILE, 4, 4)
        bits = {g: t.float().requires_grad_() for g, t in uniform.as_tensors().items()}
        objective.differentiable(PROFILE, bits).backward()
        grads = [bits[g].grad for g in bits]
        assert all(g is None or torch.all(g >= 0) for g in grads)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
