"""A study's float start: the trained float model every trial starts from.

A study has a float start when its spec gives ``[model] weights`` (a state dict the
user trained) or ``[training] pretrain_epochs`` (float training inside the study,
from those weights if given, else from the seeded initialisation). It is made once
per study, before the first trial, by whichever driver gets there first:

- under the study's lock, so with several drivers exactly one makes it and the
  others wait for it, then find it made;
- written atomically as ``float-start.pt`` in the study's artefact folder (where
  trials, Ray workers included, read it) and recorded as the study attribute
  ``float_start`` (path, sha256, validation and test accuracy, epochs, seconds);
- trained with per-epoch checkpoints (``float-start-checkpoint/``), so a driver
  killed during pretraining leaves nothing half-written and the next ``study run``
  resumes from its last epoch.

Weights files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never pickled code. A file that does not fit the model is refused
in one line naming the file and the first offending keys.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mpsearch.weights import FLOAT_START_FILE, WeightsError, load_weights, sha256_file

FLOAT_START_ATTR = "float_start"
CHECKPOINT_DIR = "float-start-checkpoint"
def check_weights(spec, host, digest: bool = True) -> str | None:
    """Check ``[model] weights`` before a study is written: readable, fitting the model at the
    dataset's shape, and matching a pinned ``weights_sha256``.

    Returns:
        The file's sha256 (None when the spec gives no weights).

    Raises:
        WeightsError: one line naming the file and what is wrong.
    """
    path = spec.model.weights
    if path is None:
        return None
    from mpsearch.trial import load_data

    train, _, _ = load_data(spec)
    model = host.models.get(spec.model.name).create(train.num_classes, train.input_shape, seed=0)
    load_weights(path, model)
    found = sha256_file(path)
    if spec.model.weights_sha256 is not None and found != spec.model.weights_sha256:
        raise WeightsError(f"weights file {path!r} has sha256 {found}, not the "
                           f"{spec.model.weights_sha256} the spec pins; give the right file or digest.")
    return found


def check_unchanged(spec) -> None:
    """Refuse a weights file that changed since the study was created (its stored sha256).

    A file that is gone is not refused here: the float start it made may already exist.

    Raises:
        WeightsError: the file's sha256 differs from the stored one.
    """
    path, stored = spec.model.weights, spec.model.weights_sha256
    if path is None or stored is None or not Path(path).is_file():
        return
    found = sha256_file(path)
    if found != stored:
        raise WeightsError(f"weights file {path!r} has changed since study {spec.name!r} was created "
                           f"(sha256 {found}, stored {stored}); restore it, or create a new study.")


def recorded(study) -> dict[str, Any] | None:
    """The study's ``float_start`` record, if its file is still there unchanged."""
    record = study.user_attrs.get(FLOAT_START_ATTR)
    if not isinstance(record, dict) or not record.get("path") or not Path(record["path"]).is_file():
        return None
    return record if sha256_file(record["path"]) == record.get("sha256") else None


def ensure_float_start(study, spec, host, artefacts: Path,
                       say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Make the study's float start if it has none yet (once, under the study's lock).

    Returns:
        The ``float_start`` record, or None when the spec asks for no float start.

    Raises:
        WeightsError: the weights file changed since the study was created, or is missing
            while the float start still has to be made.
    """
    if not spec.has_float_start:
        return None
    check_unchanged(spec)
    found = recorded(study)
    if found is not None:
        return found
    import optuna

    from mpsearch.optuna_private import study_id, study_storage
    from mpsearch.execution.lock import study_lock

    say = say or (lambda message: None)
    with study_lock(study_storage(study), study_id(study)):
        fresh = optuna.load_study(study_name=study.study_name, storage=study_storage(study))
        found = recorded(fresh)  # another driver made it while this one waited
        if found is not None:
            return found
        if spec.model.weights is not None and not Path(spec.model.weights).is_file():
            raise WeightsError(f"weights file {spec.model.weights!r} of study {spec.name!r} does not "
                               f"exist; restore it to make the study's float start.")
        record = make_float_start(spec, host, Path(artefacts), say)
        study.set_user_attr(FLOAT_START_ATTR, record)
    return record


def make_float_start(spec, host, artefacts: Path,
                     say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Train (or copy) the float start into ``artefacts/float-start.pt`` and evaluate it.

    Resumes from ``artefacts/float-start-checkpoint/`` when an earlier run was cut
    short; deletes it when done.

    Returns:
        The record stored as the study's ``float_start`` attribute.
    """
    from mpsearch.checkpoint import CheckpointMismatch, TrialCheckpointer
    from mpsearch.strategy import START_INIT
    from mpsearch.trial import evaluate, load_data, make_context, trial_seed

    started = time.perf_counter()
    training = spec.training
    pretrain = replace(training, epochs=training.pretrain_epochs,
                       lr=training.pretrain_lr or training.lr,
                       optimizer=training.pretrain_optimizer or training.optimizer)
    pspec = replace(spec, training=pretrain)
    artefacts.mkdir(parents=True, exist_ok=True)
    folder = artefacts / CHECKPOINT_DIR
    identity = {"float_start": {"model": spec.model.name, "weights": spec.model.weights_sha256,
                                "data": repr(spec.data), "training": repr(pretrain),
                                "seed": spec.study.seed}}
    checkpoints = TrialCheckpointer(folder, folder if (folder / "last.pt").exists() else None, identity)
    context = make_context(pspec, 0, trial_seed(spec.study.seed, 0), host, start=START_INIT,
                           checkpoints=checkpoints)
    model = context.model
    if spec.model.weights is not None:
        model.load_state_dict(load_weights(spec.model.weights, model))
    if training.pretrain_epochs > 0:
        say(f"training the float start: {training.pretrain_epochs} epoch(s) of {spec.model.name} on "
            f"{spec.data.name}" + (", resumed from its last checkpoint" if checkpoints.resuming else ""))
        try:
            context.fit(model, training.pretrain_epochs, phase="pretrain")
        except CheckpointMismatch:  # a checkpoint that does not fit: start over without it
            checkpoints.remove()
            return make_float_start(spec, host, artefacts, say)
    val_accuracy = evaluate(model, context.val)
    test_accuracy = evaluate(model, load_data(spec)[2].to(context.device))
    path = artefacts / FLOAT_START_FILE
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, partial)
    os.replace(partial, path)
    checkpoints.remove()
    record = {"path": str(path.resolve()), "sha256": sha256_file(path),
              "source": ("weights" if training.pretrain_epochs == 0 else
                         "weights+pretrained" if spec.model.weights else "pretrained"),
              "weights": spec.model.weights, "epochs": training.pretrain_epochs,
              "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
              "seconds": time.perf_counter() - started, "history": context.history}
    say(f"float start: {describe(record)}")
    return record


def describe(record: Mapping[str, Any], trials: int | None = None) -> str:
    """``"4 epochs, 98.9 % validation, 212 s"`` (and ``", shared by 40 trials"``)."""
    what = (f"{record['epochs']} epoch(s) of pretraining" if record.get("epochs") else "the given weights")
    if record.get("source") == "weights+pretrained":
        what += " from the given weights"
    text = f"{what}, {100 * record['val_accuracy']:.1f} % validation, {record['seconds']:.0f} s"
    return text + (f", shared by {trials} trial(s)" if trials is not None else "")
