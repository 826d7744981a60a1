"""``mpsearch study plot NAME --trial N``: how a trial's widths moved during its search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from mpsearch import plots
from mpsearch.assignment import PrecisionAssignment
from mpsearch.cli import PluginGroup, State
from mpsearch.cli.study_report import COMMANDS
from mpsearch.errors import MpsearchError
from mpsearch.storage import OBJECTIVES_ATTR, UNITS_ATTR, open_storage
from mpsearch.record import WIDTHS_PREFIX

optuna.logging.set_verbosity(optuna.logging.WARNING)

GROUPS = ["conv1:weight", "conv1:input", "fc2:weight", "fc2:input"]
TAB10 = {0: (0x1F, 0x77, 0xB4), 1: (0xFF, 0x7F, 0x0E), 2: (0x2C, 0xA0, 0x2C)}


def history(epochs: int = 4) -> list[dict]:
    """BitPruning-like: widths fall from 8 during the search, then stay for the fine-tuning."""
    rows = []
    for e in range(epochs):
        phase = "search" if e < epochs - 1 else "finetune"
        rows.append({"epoch": e, "phase": phase, "loss": 0.1, "val_accuracy": 0.9,
                     **{f"{WIDTHS_PREFIX}{g}": 8.0 - min(e, epochs - 2) * (1.0 + i)
                        for i, g in enumerate(GROUPS)}})
    return rows


def episodes(n: int = 30) -> dict:
    return {"step": "episode", "score_name": "reward", "best": 17,
            "groups": {g: [2 + (k * (i + 1)) % 7 for k in range(n)] for i, g in enumerate(GROUPS)},
            "score": [-0.01 + 0.0003 * k for k in range(n)]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("widths")
    url = f"sqlite:///{folder / 'w.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name="w",
                                directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "bitops"])
    study.set_user_attr(UNITS_ATTR, {"bitops": "GBitOPs"})
    from mpsearch.host import PluginHost
    from mpsearch.models import model_profile

    profile = model_profile(PluginHost(entry_points=False).models.get("lenet5"))
    kinds = [({"history": history()}, TrialState.COMPLETE),                         # 0: per epoch
             ({"history": history()[:1], "search_widths": episodes()}, TrialState.COMPLETE),  # 1: rl
             ({"history": [{"epoch": 0, "phase": "finetune", "loss": 0.1}]}, TrialState.COMPLETE),  # 2
             ({"history": history(3), "fail_reason": "diverged: ..."}, TrialState.FAIL)]  # 3
    for number, (attrs, state) in enumerate(kinds):
        art = folder / f"trial-{number:05d}"
        art.mkdir()
        PrecisionAssignment.uniform(profile, 4, 4).save(art / "assignment.json")
        study.add_trial(create_trial(
            params={"strategy": "s"}, distributions={"strategy": CategoricalDistribution(["s"])},
            values=None if state == TrialState.FAIL else [0.9, 0.1],
            user_attrs={"strategy": "s", **attrs,
                        **({} if state == TrialState.FAIL else {"artefacts": str(art)})},
            state=state))
    return url, study


def pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)


def has_colour(image: np.ndarray, rgb: tuple[int, int, int], at_least: int = 50) -> bool:
    return int((np.abs(image - np.array(rgb)).sum(-1) < 30).sum()) >= at_least


@pytest.mark.parametrize("number, panels", [(0, 1), (1, 1), (3, 1)])
def test_a_trials_widths_are_drawn_one_colour_per_layer(study, tmp_path, number, panels):
    _, s = study
    image = pixels(plots.plot_widths(s, number, tmp_path / "w.png"))
    assert image.shape[0] >= 360 * panels and image.shape[1] >= 800
    # conv1 and fc2: two layers, tab10's first two colours; no third layer
    assert has_colour(image, TAB10[0]) and has_colour(image, TAB10[1])
    assert not has_colour(image, TAB10[2], at_least=5)


def test_a_trial_that_recorded_no_widths_draws_nothing(study, tmp_path):
    _, s = study
    assert plots.plot_widths(s, 2, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(MpsearchError, match="has no trial 9"):
        plots.plot_widths(s, 9, tmp_path / "x.png")


def invoke(*args: str):
    group = PluginGroup(name="study")
    for command in COMMANDS:
        group.add_command(command)
    return CliRunner().invoke(group, list(args), obj=State((), False), catch_exceptions=False)


def test_the_plot_command_draws_the_trajectory_of_the_trial(study, tmp_path):
    url, _ = study
    result = invoke("plot", "w", "--storage", url, "-o", str(tmp_path), "--trial", "1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"wrote {tmp_path / 'w-trial1-widths.png'}"
    pixels(tmp_path / "w-trial1-widths.png")
    result = invoke("plot", "w", "--storage", url, "-o", str(tmp_path), "--trial", "2", "--force")
    assert result.output.splitlines()[-1] == "trial 2 recorded no widths per epoch"
