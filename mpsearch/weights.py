"""Reading a model's weights from a state-dict file: checked against the model, never unpickling code.

Weights files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only. A file that does not fit the model is refused in one line naming
the file and the first offending keys. Used by trials, the float start and the
command line alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mpsearch.errors import MpsearchError

FLOAT_START_FILE = "float-start.pt"  # a study's float start, in its artefact folder
_SHOWN = 3  # offending keys named in an error


class WeightsError(MpsearchError):
    """A weights file that cannot be read, or does not fit the model."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict saved in ``path`` (``weights_only``), or a one-line :class:`WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors are many
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "it holds pickled objects that weights_only loading refuses (save model.state_dict())"
        raise WeightsError(f"weights file {str(path)!r} cannot be read: {first}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a common checkpoint layout: {"state_dict": ..., "epoch": ...}
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"weights file {str(path)!r} is not a state dict (a mapping of parameter "
                           f"names to tensors); save it with torch.save(model.state_dict(), path).")
    return dict(state)


def load_weights(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, checked against ``model``'s keys and shapes.

    Raises:
        WeightsError: unreadable, not a state dict, missing or unexpected keys, wrong shapes.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (the model's is {list(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing key(s) {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s) {_first(unexpected)}")
    if shapes:
        problems.append(f"wrong shape(s) {_first(shapes)}")
    if problems:
        raise WeightsError(f"weights file {str(path)!r} does not fit the model: {'; '.join(problems)}.")
    return state


def _first(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
