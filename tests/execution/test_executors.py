"""The built-in executors pass the executor conformance suite (``ray`` under the slow/ray markers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsearch.testing.executors import ExecutorTestCase


class TestLocalExecutor(ExecutorTestCase):
    executor = "local"


@pytest.mark.slow
@pytest.mark.ray
class TestRayExecutor(ExecutorTestCase):
    executor = "ray"


POOL = str(Path(__file__).resolve().parents[1] / "executor_pool_plugin.py")


class TestPoolExecutorPlugin(ExecutorTestCase):
    """An executor a plugin registers through ``register_executors`` keeps the same contract."""

    executor = "pool"
    plugins = (POOL,)


def test_a_plugin_executor_runs_from_the_command_line(tmp_path):
    import optuna
    from click.testing import CliRunner

    from mpsearch.cli import cli
    from mpsearch.testing.executors import _spec_text

    spec = tmp_path / "pool.toml"
    spec.write_text(_spec_text("pooled", "local", 1).replace("enqueue = [", "# enqueue = ["))
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    result = CliRunner().invoke(cli, ["--plugin", POOL, "--plugin", "mpsearch.testing.executors",
                                      "study", "create", str(spec), "--storage", url,
                                      "--executor", "pool", "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pooled", storage=url)
    assert [t.state.name for t in study.trials] in (["COMPLETE"], ["FAIL"])
    assert [r["executor"] for r in study.user_attrs["runs"]] == ["pool"]


def test_an_unknown_executor_is_one_line_with_close_matches(tmp_path):
    from click.testing import CliRunner

    from mpsearch.cli import cli
    from mpsearch.testing.executors import _spec_text

    spec = tmp_path / "bad.toml"
    spec.write_text(_spec_text("bad", "locl", 1))
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    base = ["--plugin", "mpsearch.testing.executors", "study", "create", str(spec), "--storage", url]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code != 0
    assert "[resources] executor: unknown executor 'locl'. Did you mean 'local'?" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, [*base, "--executor", "pol"])
    assert "--executor: unknown executor 'pol'." in result.output and "Available: local, ray" in result.output
