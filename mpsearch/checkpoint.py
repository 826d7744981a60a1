"""Per-epoch checkpoints of a trial, and resuming a trial from them.

A trial trains through :meth:`mpsearch.trial.TrialContext.fit`, once or several
times (pretraining, search, fine-tuning, candidates). The checkpointer numbers
those calls. After every epoch of call ``k`` it writes ``last.pt``: the model
being trained, its optimizers and schedule, the objects the strategy asked to be
kept (:meth:`TrialCheckpointer.track`: learned-width schedules, step counters),
every random state (the trial's generator, torch, numpy, Python), the history and
the epochs trained. When call ``k`` ends it also writes ``fit-<k>.pt``: the model
and random state at the end of that call.

Resuming re-runs the strategy from the start, deterministically. Calls that
ended before the checkpoint are not trained again: their end state is loaded
into the model they are given. The call the checkpoint interrupted loads its
epoch state and goes on from the next epoch; from then on the trial runs as it
would have, so a resumed trial ends exactly where an uninterrupted one would (on
the same device and thread count).

Files are written atomically (a temporary file, then a rename) and read with
``torch.load(weights_only=True)``: only tensors and plain containers, never
pickled code. A strategy is resumed only if it declares ``resumable = True``
(all its state between epochs is in the model, its optimizers, and what it
tracks); other strategies restart a trial from scratch.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.errors import MpsearchError

FORMAT = 1
LAST = "last.pt"


def checkpoint_folder(artefacts: Path, number: int) -> Path:
    """Where trial ``number`` of a study with artefacts in ``artefacts`` keeps its checkpoints."""
    return Path(artefacts) / f"trial-{number:05d}" / "checkpoint"


class CheckpointError(MpsearchError):
    """A checkpoint that cannot be read or does not belong to this trial."""


class CheckpointMismatch(Exception):
    """The state saved for a call does not fit the call being resumed: restart the trial."""


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: Mapping[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _safe(value: Any) -> bool:
    """Whether ``value`` survives ``torch.load(weights_only=True)`` as it is."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _safe(v) for k, v in value.items())
    return False


def _save(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_tensors(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file on a full disk frees its space
        raise


def save_tensors(payload: Any, path: Path) -> None:
    """``torch.save`` to ``path``, serialised in memory first: a full disk or a folder that
    cannot be written raises ``OSError`` naming the file (torch's own writer would raise
    a ``RuntimeError`` from deep inside its zip writer)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        Path(path).write_bytes(buffer.getbuffer())
    except OSError as exc:  # a failed write names no file: name it
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint file safely.

    Raises:
        CheckpointError: the file is unreadable, corrupt, or not an mpsearch checkpoint.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and OS errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable or corrupt ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an mpsearch checkpoint "
                              f"of format {FORMAT}")
    return payload


class TrialCheckpointer:
    """Writes one trial's checkpoints to ``folder`` and resumes from ``resume_from``.

    Args:
        folder: where this trial's checkpoints go (created), or None to write none.
        resume_from: a folder of checkpoints of the same trial (its own after a restart,
            or the one of the trial it re-runs after a driver crash), or None.
        identity: what a checkpoint must match to be resumed (strategy, parameters,
            spec); a checkpoint of anything else is ignored, with a warning.
    """

    def __init__(self, folder: Path | None, resume_from: Path | None, identity: Mapping[str, Any]):
        self.folder = folder
        self.identity = dict(identity)
        self.tracked: dict[str, Any] = {}
        self.calls = 0
        self.saved = 0
        self.skipped = 0
        self.warning: str | None = None
        self.resumed_at: dict[str, Any] | None = None
        self.context_history: list[dict] | None = None
        self._resume: dict[str, Any] | None = None
        self._resume_folder: Path | None = None
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._unwritable(exc)
        if resume_from is not None and (Path(resume_from) / LAST).exists():
            self._open(Path(resume_from))

    def _open(self, folder: Path) -> None:
        self._resume_folder = folder  # removed with the trial's own, used or not
        try:
            payload = load_checkpoint(folder / LAST)
        except CheckpointError as exc:
            self.warning = f"{exc}; the trial restarted from scratch"
            return
        if payload.get("identity") != self.identity:
            self.warning = (f"checkpoint {str(folder / LAST)!r} belongs to another trial "
                            f"(strategy, parameters or spec differ); the trial restarted from scratch")
            return
        self._resume = payload

    def restart(self, reason: str) -> TrialCheckpointer:
        """A checkpointer for running the trial again from scratch, ``reason`` recorded."""
        fresh = TrialCheckpointer(self.folder, None, self.identity)
        fresh._resume_folder = self._resume_folder
        fresh.warning = f"{reason}; the trial restarted from scratch"
        return fresh

    @property
    def resuming(self) -> bool:
        return self._resume is not None

    def track(self, name: str, obj: Any) -> None:
        """Keep ``obj`` in every checkpoint: anything with ``state_dict``/``load_state_dict``,
        a :class:`torch.Generator`, or a dict of tensors and plain values (restored in place).

        While a tracked dict holds a value that cannot be stored safely (an object),
        no checkpoint is written: the previous one still describes a consistent state.
        """
        self.tracked[name] = obj

    # -- the calls of fit ----------------------------------------------------------------------

    def begin(self) -> int:
        """Number the next call of fit."""
        self.calls += 1
        return self.calls - 1

    def finished_call(self, call: int, model: nn.Module,
                      generator: torch.Generator) -> dict[str, Any] | None:
        """If the run being resumed finished call ``call``, restore its end and return what it saved."""
        if self._resume is None or call >= self._resume["call"]:
            return None
        assert self._resume_folder is not None
        path = self._resume_folder / f"fit-{call:04d}.pt"
        try:
            end = load_checkpoint(path)
            model.load_state_dict(end["model"])
            self._load_tracked(end["tracked"])
        except (CheckpointError, RuntimeError, KeyError, CheckpointMismatch) as exc:
            raise CheckpointMismatch(f"{path}: {exc}") from None
        _set_rng_state(generator, end["rng"])
        if self.folder is not None and self.folder != self._resume_folder:
            shutil.copyfile(path, self.folder / path.name)
        return end

    def resume_call(self, call: int, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                    schedule: Any, generator: torch.Generator) -> dict[str, Any] | None:
        """If the checkpoint interrupted call ``call``, restore its epoch state and return it."""
        if self._resume is None or call != self._resume["call"]:
            return None
        state, self._resume = self._resume, None
        try:
            model.load_state_dict(state["model"])
            if len(state["optimizers"]) != len(optimizers):
                raise CheckpointMismatch("a different number of optimizers")
            for opt, saved in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(saved)
            if schedule is not None and state["schedule"] is not None:
                schedule.load_state_dict(state["schedule"])
            self._load_tracked(state["tracked"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointMismatch(str(exc).splitlines()[0]) from None
        _set_rng_state(generator, state["rng"])
        self.resumed_at = {"call": call, "epoch": int(state["epoch"]),
                           "epochs_trained": float(state["epochs_trained"])}
        return state

    def epoch_done(self, call: int, epoch: int, model: nn.Module,
                   optimizers: Sequence[torch.optim.Optimizer], schedule: Any,
                   generator: torch.Generator, context_state: Mapping[str, Any]) -> None:
        """Write ``last.pt`` after epoch ``epoch`` of call ``call`` (unless state is unsafe)."""
        if self._write(LAST, model, generator, identity=self.identity, call=call, epoch=epoch,
                       optimizers=[_cpu(o.state_dict()) for o in optimizers],
                       schedule=None if schedule is None else schedule.state_dict(),
                       **context_state):
            self.saved += 1

    def call_done(self, call: int, model: nn.Module, generator: torch.Generator,
                  metrics: Mapping[str, float], context_state: Mapping[str, Any]) -> None:
        """Write ``fit-<call>.pt``: the end state of a call, for later fast-forwarding."""
        self._write(f"fit-{call:04d}.pt", model, generator, metrics=dict(metrics), **context_state)

    def _write(self, name: str, model: nn.Module, generator: torch.Generator, **fields: Any) -> bool:
        """Save the model, tracked state and random state with ``fields``; False if none was written."""
        if self.folder is None:
            return False
        tracked = self._tracked_state()
        if tracked is None:
            self.skipped += 1
            return False
        try:
            _save({"format": FORMAT, "model": _cpu(model.state_dict()), "tracked": tracked,
                   "rng": _rng_state(generator), **fields}, self.folder / name)
        except OSError as exc:
            self._unwritable(exc)
            self.skipped += 1
            return False
        return True

    def _unwritable(self, exc: OSError) -> None:
        """A folder or file that cannot be written (a full disk): the trial goes on without
        checkpoints, with a warning, rather than failing."""
        self.warning = (f"checkpoints in {str(self.folder)!r} cannot be written "
                        f"({exc.strerror or exc}); the trial went on without them")
        self.folder = None

    def remove(self) -> None:
        """Delete the checkpoints (the trial has ended; they served only to resume it)."""
        for folder in {self.folder, self._resume_folder} - {None}:
            shutil.rmtree(folder, ignore_errors=True)

    # -- tracked objects -------------------------------------------------------------------------

    def _tracked_state(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, obj in self.tracked.items():
            if isinstance(obj, torch.Generator):
                out[name] = obj.get_state()
            elif hasattr(obj, "state_dict"):
                out[name] = _cpu(obj.state_dict())
            elif isinstance(obj, dict):
                if not _safe(obj):
                    return None
                out[name] = dict(obj)
            else:
                raise TypeError(f"cannot checkpoint {name!r} of type {type(obj).__name__}")
        return out

    def _load_tracked(self, saved: Mapping[str, Any]) -> None:
        if set(saved) != set(self.tracked):
            raise CheckpointMismatch(f"tracked state {sorted(saved)} != {sorted(self.tracked)}")
        for name, obj in self.tracked.items():
            if isinstance(obj, torch.Generator):
                obj.set_state(saved[name])
            elif hasattr(obj, "load_state_dict"):
                obj.load_state_dict(saved[name])
            else:
                obj.clear()
                obj.update(saved[name])


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value

