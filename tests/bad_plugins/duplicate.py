"""A plugin that registers a strategy under a built-in's name (tests only)."""

from mpsearch import hookimpl
from mpsearch.strategy import Strategy


class Uniform(Strategy):
    """Not the built-in uniform strategy."""

    def search(self, context, params):
        raise NotImplementedError


@hookimpl
def register_strategies(register):
    register("uniform", Uniform)
