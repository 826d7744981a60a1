"""What several test modules share: the toy study spec and the command line run in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

from click.testing import CliRunner

from mpsearch.cli import cli

TOY = Path(__file__).resolve().parent / "toy_plugin.py"


def toy_spec(tmp_path: Path, name: str = "toy", n_trials: int = 3, executor: str = "local",
             extra: str = "", space: str = "", concurrent: int = 1, plugins: bool = True) -> Path:
    """A study of the toy strategy; ``plugins=False`` leaves the toy plugin out of the spec
    (it is then given with --plugin)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        {f'plugins = ["{TOY}"]' if plugins else ''}
        [study]
        name = "{name}"
        objectives = ["accuracy", "bitops"]
        sampler = "random"
        n_trials = {n_trials}
        seed = 3
        [model]
        name = "lenet5"
        [data]
        name = "mnist-mini"
        train_subset = 1000
        [training]
        epochs = 1
        batch_size = 100
        [[strategy]]
        name = "toy"
        {space}
        [resources]
        executor = "{executor}"
        max_concurrent = {concurrent}
        """) + extra)
    return path


def run(*args: str):
    """``mpsearch ARGS`` in this process (click's runner); exceptions propagate."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)
