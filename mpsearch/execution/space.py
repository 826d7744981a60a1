"""What Optuna samples for a study: its sampler, and the define-by-run search space."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpsearch.record import ATTR_STRATEGY
from mpsearch.spec import StudySpec

# The Optuna parameter that chooses a trial's strategy has the name of the attribute
# that records it (a round-robin or re-queued trial has only the attribute).
STRATEGY_PARAM = ATTR_STRATEGY


def make_sampler(spec: StudySpec):
    """The spec's Optuna sampler, seeded with the study's seed."""
    import optuna

    seed = spec.study.seed
    if spec.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.study.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed)
    if spec.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # The strategy choice makes the space dynamic; GP then samples those
    # parameters independently, which it would otherwise warn about every trial.
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


def define_space(spec: StudySpec, host) -> Callable[[Any], dict[str, Any]]:
    """The define-by-run search space: a strategy, then that strategy's hyperparameters.

    The strategy is an Optuna parameter (``strategy_choice = "sampler"``), or trial
    ``n`` runs strategy ``n mod k`` (``"round-robin"``, recorded as a user attribute).

    Returns the strategy's parameters under their own names (the Optuna trial
    holds them as ``strategy.name``).
    """
    names = [s.name for s in spec.strategies]
    by_sampler = spec.study.strategy_choice == "sampler" and len(names) > 1

    def space(trial) -> dict[str, Any]:
        if by_sampler:
            name = trial.suggest_categorical(STRATEGY_PARAM, names)
        else:  # one strategy, or round-robin (a re-queued or enqueued trial keeps its strategy)
            name = trial.user_attrs.get(STRATEGY_PARAM) or names[trial.number % len(names)]
            trial.set_user_attr(STRATEGY_PARAM, name)
        strategy = host.strategies.get(name)()
        return {"strategy": name, "params": strategy.suggest(trial, spec.strategy(name).space, name)}

    return space
