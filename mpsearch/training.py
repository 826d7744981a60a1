"""The training loop every strategy shares: epochs over a split, evaluation, optimizers.

A split is an :class:`~mpsearch.data.ImageData` in memory or an
:class:`~mpsearch.streaming.ImageFiles` streamed from disk: both give batches on
the trial's device. Losses stay on the device during an epoch; the loop
synchronises once per epoch to read the mean loss and accuracy, and a non-finite
loss then fails the trial. On CUDA the forward passes run under bf16 autocast
(``[training] autocast``); the weights, their gradients and the optimizer stay
float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.data import ImageData
from mpsearch.errors import MpsearchError
from mpsearch.spec import AUTOCAST, TrainingSection

if TYPE_CHECKING:  # pragma: no cover
    from mpsearch.streaming import ImageFiles

_autocast = {"mode": "auto"}


def set_autocast(mode: str) -> None:
    """Choose when training and evaluation run under bf16 autocast.

    Args:
        mode: ``"auto"`` (on CUDA only), ``"bf16"`` (on any device that supports
            it), or ``"off"``. Set per trial from ``[training] autocast``.
    """
    if mode not in AUTOCAST:
        raise ValueError(f"autocast mode must be one of {AUTOCAST}, not {mode!r}")
    _autocast["mode"] = mode


def autocast(device: torch.device) -> torch.autocast:
    """The autocast context for a forward pass on ``device`` (disabled where it does not apply)."""
    mode = _autocast["mode"]
    on = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


class TrialFailed(MpsearchError):
    """A trial that cannot go on (a non-finite loss, a strategy's own failure)."""


def make_optimizer(training: TrainingSection, groups: Sequence[dict[str, Any]] | Iterable[nn.Parameter],
                   lr: float | None = None) -> torch.optim.Optimizer:
    """The spec's optimizer over parameter groups (a group may set its own lr / weight_decay)."""
    lr = training.lr if lr is None else lr
    if training.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=training.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=training.momentum,
                           weight_decay=training.weight_decay, nesterov=training.momentum > 0)


def make_schedule(training: TrainingSection, optimizer: torch.optim.Optimizer,
                  total_steps: int, offset: int = 0) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Cosine annealing to zero over ``total_steps`` steps, or nothing (constant).

    Args:
        offset: steps of the same schedule already taken by an earlier optimizer (a
            trial's search before its fine-tuning): the schedule starts there.
    """
    if training.schedule == "constant" or total_steps <= 0:
        return None
    if offset == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Cosine(total_steps, offset))


class _Cosine:
    """The cosine factor at step ``offset + s`` of ``total`` (a class, so a schedule's state saves)."""

    def __init__(self, total: int, offset: int):
        self.total, self.offset = max(1, int(total)), int(offset)

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(self.offset + step, self.total) / self.total))


def steps_per_epoch(data: ImageData | ImageFiles, batch_size: int, max_batches: int | None = None) -> int:
    steps = math.ceil(len(data) / batch_size)
    return min(steps, max_batches) if max_batches else steps


def train_epoch(model: nn.Module, data: ImageData | ImageFiles, optimizer: torch.optim.Optimizer, *,
                batch_size: int, generator: torch.Generator, augment: str | None = None,
                schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                extra_loss: Callable[[], torch.Tensor] | None = None,
                after_step: Callable[[], None] | None = None,
                max_batches: int | None = None,
                extra_optimizers: Sequence[torch.optim.Optimizer] = ()) -> dict[str, float]:
    """One pass over ``data`` (or its first ``max_batches`` batches).

    Args:
        extra_loss: added to the cross-entropy at every step (a regulariser on bits).
        after_step: called after every optimizer step (e.g. to project parameters).
        extra_optimizers: stepped with ``optimizer`` (e.g. Adam for SMOL's noise
            magnitudes beside SGD for the weights); not scheduled.

    Returns:
        Mean task loss, mean total loss and training accuracy over the epoch.

    Raises:
        TrialFailed: the loss became NaN or infinite.
    """
    model.train()
    device = data.device
    task_sum = torch.zeros((), device=device)
    total_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for i, (x, y) in enumerate(data.batches(batch_size, shuffle=True, generator=generator,
                                            augment=augment)):
        if max_batches is not None and i >= max_batches:
            break
        with autocast(device):
            logits = model(x)
            task = F.cross_entropy(logits, y)
            loss = task if extra_loss is None else task + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        for extra in extra_optimizers:
            extra.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for extra in extra_optimizers:
            extra.step()
        if schedule is not None:
            schedule.step()
        if after_step is not None:
            after_step()
        task_sum += task.detach() * len(y)
        total_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    task_mean, total_mean = float(task_sum) / max(seen, 1), float(total_sum) / max(seen, 1)
    if not (math.isfinite(task_mean) and math.isfinite(total_mean)):
        raise TrialFailed("the training loss became NaN or infinite; lower the learning rate "
                          "or the regulariser's weight.")
    return {"loss": task_mean, "total_loss": total_mean, "train_accuracy": float(correct) / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData | ImageFiles, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode; training mode restored)."""
    was_training = model.training
    model.eval()
    device = data.device
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for x, y in data.batches(batch_size):
        with autocast(device):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return float(correct) / max(len(data), 1)
