"""The generic backend, through the backend conformance suite."""

from __future__ import annotations

import pytest

from mpsearch.assignment import PrecisionAssignment
from mpsearch.testing import tiny_profile
from mpsearch.testing.backends import BackendTestCase


@pytest.fixture(scope="module")
def generic():
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False).backends.get("generic")


class TestGeneric(BackendTestCase):
    @pytest.fixture
    def backend(self, generic):
        return generic

    def test_hand_computed_uniform_case(self, backend):
        profile = tiny_profile()
        # time is proportional to w x a bits against 16 x 16: (16*16)/(8*4) = 8
        a = PrecisionAssignment.uniform(profile, 8, 4)
        assert backend.speedup(profile, a) == pytest.approx(8.0)
        weights = sum(l.weight_numel for l in profile)
        inputs = sum(l.input_numel for l in profile)
        assert backend.memory_ratio(profile, a) == pytest.approx(
            (8 * weights + 4 * inputs) / (16 * (weights + inputs)))

    def test_legalisation_is_the_identity(self, backend):
        profile = tiny_profile()
        a = PrecisionAssignment.uniform(profile, 3, 5, first_last_bits=0)
        assert backend.legalise(a) == a

    def test_energy_grows_with_bits(self, backend):
        profile = tiny_profile()
        low = backend.layer_costs(profile, PrecisionAssignment.uniform(profile, 2, 2))
        high = backend.layer_costs(profile, PrecisionAssignment.uniform(profile, 8, 8))
        assert (high["energy_pj"] > low["energy_pj"]).all()


def test_a_power_of_two_backend_rounds_up():
    import pandas as pd

    from mpsearch.backends import Backend

    class PowersOfTwo(Backend):
        weight_bits = (2, 4, 8, 16)
        activation_bits = (4, 8, 16)

        def layer_costs(self, profile, assignment):  # pragma: no cover - not used here
            return pd.DataFrame()

    profile = tiny_profile()
    a = PrecisionAssignment.uniform(profile, 3, 5, first_last_bits=0)
    legal = PowersOfTwo().legalise(a)
    layers = profile.names
    assert legal[f"{layers[1]}:weight"] == 4 and legal[f"{layers[1]}:input"] == 8
    assert legal[f"{layers[0]}:weight"] == 0  # pruned stays pruned
