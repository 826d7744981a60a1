"""A driver killed with SIGKILL, then ``mpsearch study run``: the study resumes without losing,
repeating or changing a COMPLETE trial, and re-runs the killed driver's trials with their parameters."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from mpsearch.cli import cli
from mpsearch.execution.driver import GAVE_UP, ORPHAN, RETRY_OF

GRACE = ["--heartbeat", "1", "--grace", "3"]  # the killed driver's trials go stale within seconds
TRUST = "--trust-spec-plugins"  # the study's spec names the toy plugin file


@dataclass
class Kill:
    """What the study held when a driver was killed."""

    complete: dict[int, tuple] = field(default_factory=dict)  # number -> (params, values)
    running: dict[int, dict] = field(default_factory=dict)  # number -> params


def trials(url: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # not created yet
        return []


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mpsearch.cli", *args, "--quiet", *GRACE],
                            cwd=cwd, env={**os.environ, "MPSEARCH_COMPILE": "off"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_a_new_trial(driver: subprocess.Popen, url: str, name: str, delay: float,
                           need_running: bool) -> Kill:
    """SIGKILL the driver ``delay`` seconds after one more trial completed (and, with
    ``need_running``, once it runs a trial); return what the study held then."""
    before = sum(t.state == TrialState.COMPLETE for t in trials(url, name))
    deadline = time.monotonic() + 300
    while sum(t.state == TrialState.COMPLETE for t in trials(url, name)) <= before:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.1)
    time.sleep(delay)
    while need_running and not any(t.state == TrialState.RUNNING for t in trials(url, name)):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL
    found = trials(url, name)
    return Kill(complete={t.number: (t.params, t.values) for t in found if t.state == TrialState.COMPLETE},
                running={t.number: t.params for t in found if t.state == TrialState.RUNNING})


def check_resumed(url: str, name: str, n_trials: int, kills: list[Kill]) -> list:
    found = trials(url, name)
    assert [t.number for t in found] == list(range(len(found)))  # numbering continues
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in found)  # none RUNNING
    for kill in kills:  # nothing COMPLETE lost or changed
        for number, (params, values) in kill.complete.items():
            assert found[number].state == TrialState.COMPLETE
            assert (found[number].params, found[number].values) == (params, values)
    orphans = [t for t in found if t.user_attrs.get(ORPHAN)]
    left_running = {n for kill in kills for n in kill.running}
    assert {t.number for t in orphans} == left_running
    for orphan in orphans:
        assert orphan.state == TrialState.FAIL
        assert "left RUNNING by a driver that stopped" in orphan.user_attrs["fail_reason"]
        retries = [t for t in found if t.user_attrs.get(RETRY_OF) == orphan.number]
        if orphan.user_attrs.get(GAVE_UP):  # its point's driver died max_retries + 1 times
            assert retries == [] and "not re-queued" in orphan.user_attrs["fail_reason"]
            continue
        assert len(retries) == 1 and retries[0].number > orphan.number
        # the retry runs the orphan's point (a point claimed but not yet sampled keeps its
        # queued parameters)
        assert retries[0].system_attrs["fixed_params"].items() <= retries[0].params.items()
        assert orphan.params.items() <= retries[0].params.items()
    counted = [t for t in found if t.state == TrialState.COMPLETE
               or (t.state == TrialState.FAIL
                   and (not t.user_attrs.get(ORPHAN) or t.user_attrs.get(GAVE_UP)))]
    assert len(counted) == n_trials
    return found


def test_a_killed_driver_is_resumed_by_the_next_run(storage_url, toy_study_spec, tmp_path, monkeypatch):
    spec = toy_study_spec("crash", n_trials=4)
    driver = start(["study", "create", str(spec), "--storage", storage_url], tmp_path)
    kill = kill_after_a_new_trial(driver, storage_url, "crash", random.Random(7).uniform(0, 1.0),
                                  need_running=True)
    assert kill.complete and kill.running

    # the kill needs a process of its own; the next run need not
    monkeypatch.chdir(tmp_path)
    resumed = CliRunner().invoke(cli, ["study", "run", "crash", "--storage", storage_url,
                                       "--executor", "local", *GRACE, TRUST], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert "left running by a driver that stopped" in resumed.stderr
    check_resumed(storage_url, "crash", 4, [kill])


@pytest.mark.slow
def test_three_kills_at_random_points_then_the_study_completes(storage_url, toy_study_spec, tmp_path,
                                                               capsys):
    n_trials, rng = 8, random.Random(2024)
    spec = toy_study_spec("crashes", n_trials=n_trials, enqueue="[{bits = 4}]")
    kills = []
    for k in range(3):
        args = (["study", "create", str(spec)] if k == 0 else ["study", "run", "crashes", TRUST])
        driver = start([*args, "--storage", storage_url, "--executor", "local"], tmp_path)
        kills.append(kill_after_a_new_trial(driver, storage_url, "crashes", rng.uniform(0, 4.0),
                                            need_running=False))
    final = subprocess.run([sys.executable, "-m", "mpsearch.cli", "study", "run", "crashes",
                            "--storage", storage_url, "--quiet", *GRACE, TRUST],
                           cwd=tmp_path, env={**os.environ, "MPSEARCH_COMPILE": "off"},
                           capture_output=True, text=True, timeout=600, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    found = check_resumed(storage_url, "crashes", n_trials, kills)
    enqueued = [t for t in found if t.system_attrs.get("fixed_params") == {"toy.bits": 4}
                and RETRY_OF not in t.user_attrs]
    assert [t.number for t in enqueued] == [0]
    with capsys.disabled():  # the measured behaviour, for the record
        for k, kill in enumerate(kills, 1):
            print(f"\nkill {k}: COMPLETE {sorted(kill.complete)}, RUNNING {sorted(kill.running)}")
        print("end: " + ", ".join(f"{t.number}:{t.state.name}"
                                  + (f"(retry of {t.user_attrs[RETRY_OF]})" if RETRY_OF in t.user_attrs
                                     else "") for t in found))
