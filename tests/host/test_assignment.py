"""PrecisionAssignment: round trips, summaries, validation, immutability."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import AssignmentError
from mpsearch.profile import profile_model
from mpsearch.testing import tiny_profile
from mpsearch.testing.hypothesis import assignments

PROFILE = tiny_profile()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=assignments(PROFILE))
def test_json_round_trip(tmp_path, a):
    path = a.save(tmp_path / "a.json")
    assert PrecisionAssignment.load(path) == a
    data, arrays = a.to_dict()
    assert PrecisionAssignment.from_dict(json.loads(json.dumps(data)), arrays) == a


def test_per_parameter_bits_go_to_a_sidecar(tmp_path):
    from mpsearch.host import PluginHost

    lenet = PluginHost(entry_points=False, ).models.get("lenet5")
    profile = profile_model(lenet.create(seed=0), lenet.input_shape)
    fc1 = profile["fc1"]
    bits = torch.randint(0, 9, fc1.weight_shape)
    a = PrecisionAssignment.uniform(profile, 4, 4).replace({fc1.weight_group: bits})
    path = a.save(tmp_path / "lenet.json")
    assert (tmp_path / "lenet.npz").is_file()
    text = path.read_text()
    assert len(text) < 10_000 and '"sidecar"' in text
    loaded = PrecisionAssignment.load(path)
    assert torch.equal(loaded[fc1.weight_group], bits)
    (tmp_path / "lenet.npz").unlink()
    with pytest.raises(AssignmentError, match="sidecar"):
        PrecisionAssignment.load(path)


def test_averages_table_and_histogram_by_hand():
    shapes = {"a:weight": (4, 2), "a:input": (2,), "b:weight": (2, 4), "b:input": (4,)}
    bits = {"a:weight": torch.tensor([[2], [2], [4], [0]]), "a:input": 8,
            "b:weight": 3, "b:input": 4}
    a = PrecisionAssignment(bits, shapes)
    # a: 2+2+4+0 bits per row of 2 weights = 16 bits; b: 8 weights x 3 bits = 24 bits
    assert a.average_weight_bits() == pytest.approx((16 + 24) / 16)
    assert a.average_activation_bits() == pytest.approx((2 * 8 + 4 * 4) / 6)
    table = a.to_frame()
    assert table.loc["a", "weight_bits"] == 2 and table.loc["a", "pruned"] == 0.25
    assert table.loc["a", "weight_bits_max"] == 4 and table.loc["b", "input_bits"] == 4
    hist = a.histogram("weight")
    assert hist.to_dict() == {0: 2, 2: 4, 3: 8, 4: 2}
    assert a.histogram("input").to_dict() == {4: 4, 8: 2}


def test_assignments_are_immutable():
    a = PrecisionAssignment.uniform(PROFILE, 4, 4).replace(
        {"stem:weight": torch.full((8, 1, 1, 1), 4)})
    view = a["stem:weight"]
    view += 10
    assert int(a["stem:weight"].max()) == 4
    b = a.replace({"stem:weight": 2})
    assert a["stem:weight"].shape == (8, 1, 1, 1) and b["stem:weight"] == 2
    with pytest.raises(TypeError):
        a["stem:weight"] = 3  # type: ignore[index]


@pytest.mark.parametrize("bits, message", [
    (33, "outside 0-32"),
    (-1, "outside 0-32"),
    (torch.full((8, 1, 1, 1), 40), "outside 0-32"),
    (torch.full((8, 1, 1, 1), 2.0), "integer dtype"),
    (torch.full((3, 1, 1, 1), 2), "do not broadcast"),
    (torch.full((8, 3), 2), "do not broadcast"),
    (2.5, "int or an integer tensor"),
    (True, "must be an integer"),
])
def test_invalid_bits_are_refused(bits, message):
    with pytest.raises(AssignmentError, match=message):
        PrecisionAssignment.uniform(PROFILE, 4, 4).replace({"stem:weight": bits})


def test_validation_against_a_model():
    a = PrecisionAssignment.uniform(PROFILE, 4, 4)
    a.validate(PROFILE)
    other = profile_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), (3, 8, 8))
    with pytest.raises(AssignmentError, match=r"unknown group\(s\) stem:weight.*missing group\(s\) 1:weight"):
        a.validate(other)
    shapes = {g: a.shape(g) for g in a}
    shapes["stem:weight"] = (8, 3, 5, 5)
    wrong = PrecisionAssignment(dict(a), shapes)
    with pytest.raises(AssignmentError, match="has shape"):
        wrong.validate(PROFILE)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ('{"format": "something-else"}', "not an mpsearch assignment"),
    ('{"format": "mpsearch-assignment", "version": 99, "groups": {}}', "version 99"),
    ('{"format": "mpsearch-assignment", "version": 1, "groups": {"x:weight": {"bits": 3}}}',
     "malformed"),
    ('{"format": "mpsearch-assignment", "version": 1, "groups": {"x": {"shape": [2], "bits": 3}}}',
     "must be '<layer>:weight'"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AssignmentError, match=message) as info:
        PrecisionAssignment.load(path)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(AssignmentError, match="does not exist"):
        PrecisionAssignment.load("/nonexistent/a.json")


@given(st.integers(0, 32), st.integers(0, 32))
def test_uniform_first_last_override(w, a):
    u = PrecisionAssignment.uniform(PROFILE, w, a, first_last_bits=8)
    names = PROFILE.names
    assert u[f"{names[0]}:weight"] == 8 and u[f"{names[-1]}:input"] == 8
    assert all(u[f"{n}:weight"] == w and u[f"{n}:input"] == a for n in names[1:-1])
