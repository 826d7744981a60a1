"""Per-epoch checkpoints: a trial interrupted at an epoch boundary resumes to the same result."""

from __future__ import annotations

import pytest
import torch

from mpsearch.checkpoint import CheckpointError, checkpoint_folder, load_checkpoint
from mpsearch.record import ATTR_CHECKPOINT_WARNING, ATTR_CHECKPOINTS
from mpsearch.spec import parse_spec
from mpsearch.trial import run_trial


def spec(checkpoint: bool = True, strategy: str = "uniform"):
    return parse_spec({
        "study": {"name": "ck", "objectives": ["accuracy", "bitops"], "n_trials": 1},
        "model": {"name": "lenet5"},
        "data": {"name": "mnist-mini", "train_subset": 640},
        "training": {"epochs": 3, "batch_size": 128, "lr": 0.05},
        "strategy": [{"name": strategy}],
        "resources": {"checkpoint": checkpoint}}, source="test")


class Interrupted(BaseException):
    """Stands for a process killed between epochs: nothing in the trial catches it."""


def interrupt_at(epoch: int):
    def reporter(e, metrics):
        if e == epoch:
            raise Interrupted
    return reporter


CASES = {  # strategy, params, the history epoch at which the first run is cut short
    "uniform": ({"weight_bits": 4, "act_bits": 4}, 2),
    "bitpruning": ({"gamma": 0.5, "lr_bits": 0.2, "split": 0.8}, 3),  # inside fine-tuning
    "random": ({"budget": 0.3, "candidates": 2}, 2),  # after the candidates' calls
    "fracbits": ({"target_fraction": 0.3, "kappa": 10}, 1),
}


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_an_interrupted_trial_resumes_to_the_uninterrupted_result(tmp_path, strategy):
    params, cut = CASES[strategy]
    s = spec(strategy=strategy)
    whole = run_trial(s, 0, strategy, params, artefacts=tmp_path / "a")
    assert whole.attrs[ATTR_CHECKPOINTS]["saved"] >= 2 and not whole.failed
    with pytest.raises(Interrupted):
        run_trial(s, 0, strategy, params, artefacts=tmp_path / "b", reporter=interrupt_at(cut))
    folder = checkpoint_folder(tmp_path / "b", 0)
    saved = load_checkpoint(folder / "last.pt")
    assert saved["epoch"] >= 0 and len(saved["history"]) == cut  # the cut epoch was not saved
    resumed = run_trial(s, 0, strategy, params, artefacts=tmp_path / "b")
    info = resumed.attrs[ATTR_CHECKPOINTS]
    assert info["resumed_at"] is not None and info["resumed_at"]["epochs_trained"] > 0
    assert resumed.values == whole.values
    assert resumed.attrs["history"] == whole.attrs["history"]
    assert resumed.attrs["test_accuracy"] == whole.attrs["test_accuracy"]
    assert not folder.exists()  # checkpoints go when the trial ends


def test_a_re_run_trial_resumes_from_the_checkpoints_of_the_trial_it_re_runs(tmp_path):
    s, params = spec(), CASES["uniform"][0]
    with pytest.raises(Interrupted):
        run_trial(s, 4, "uniform", params, artefacts=tmp_path, reporter=interrupt_at(1))
    again = run_trial(s, 9, "uniform", params, artefacts=tmp_path,
                      resume_from=checkpoint_folder(tmp_path, 4))
    assert again.attrs[ATTR_CHECKPOINTS]["resumed_at"]["epoch"] == 0
    assert not checkpoint_folder(tmp_path, 4).exists() and not checkpoint_folder(tmp_path, 9).exists()


def test_a_checkpoint_of_other_parameters_is_not_resumed(tmp_path):
    s = spec()
    with pytest.raises(Interrupted):
        run_trial(s, 0, "uniform", {"weight_bits": 4, "act_bits": 4}, artefacts=tmp_path,
                  reporter=interrupt_at(1))
    other = run_trial(s, 0, "uniform", {"weight_bits": 3, "act_bits": 4}, artefacts=tmp_path)
    assert other.attrs[ATTR_CHECKPOINTS]["resumed_at"] is None
    assert "belongs to another trial" in other.attrs[ATTR_CHECKPOINT_WARNING]


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""], ids=["garbage", "empty"])
def test_a_corrupt_checkpoint_restarts_the_trial_with_a_one_line_warning(tmp_path, content):
    folder = checkpoint_folder(tmp_path, 0)
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(content)
    out = run_trial(spec(), 0, "uniform", CASES["uniform"][0], artefacts=tmp_path)
    assert not out.failed and out.attrs[ATTR_CHECKPOINTS]["resumed_at"] is None
    warning = out.attrs[ATTR_CHECKPOINT_WARNING]
    assert "unreadable or corrupt" in warning and str(folder / "last.pt") in warning
    assert "\n" not in warning


class NotAllowed:
    """Unpickling this would run code of the file's choosing; a safe load refuses it."""


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "payload": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_checkpoint(path)
    torch.save({"format": 1, "model": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not an mpsearch checkpoint"):
        load_checkpoint(path)


def test_no_checkpoints_when_the_spec_turns_them_off_or_the_strategy_cannot_resume(tmp_path, host):
    off = run_trial(spec(checkpoint=False), 0, "uniform", CASES["uniform"][0], artefacts=tmp_path)
    assert ATTR_CHECKPOINTS not in off.attrs
    assert not host.strategies.get("adapt").resumable
    assert all(host.strategies.get(n).resumable for n in CASES)


def test_an_unsafe_tracked_state_skips_checkpoints_and_keeps_the_last_consistent_one(tmp_path):
    from mpsearch.checkpoint import TrialCheckpointer

    ck = TrialCheckpointer(tmp_path, None, {"strategy": "x"})
    state = {"step": 1}
    ck.track("state", state)
    model, gen = torch.nn.Linear(2, 2), torch.Generator()
    ck.epoch_done(0, 0, model, [], None, gen, {"history": [], "epochs_trained": 1.0})
    state["found"] = object()
    ck.epoch_done(0, 1, model, [], None, gen, {"history": [], "epochs_trained": 2.0})
    assert (ck.saved, ck.skipped) == (1, 1)
    assert load_checkpoint(tmp_path / "last.pt")["tracked"]["state"] == {"step": 1}
