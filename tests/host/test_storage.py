"""Study storage on SQLite and on a real PostgreSQL server: round trips, concurrent drivers, locks,
heartbeats, and one-line errors for storages that cannot be opened."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from mpsearch.cli import cli
from mpsearch.execution.driver import DRIVER_ATTR, ORPHAN, RETRY_OF, reconcile
from mpsearch.errors import MpsearchError
from mpsearch.execution.heartbeat import GRACE_ATTR, Heartbeat, stale_trials
from mpsearch.host import PluginHost
from mpsearch.spec import load_spec
from mpsearch.execution.lock import study_lock
from mpsearch.storage import load_study, open_storage
from mpsearch.study import create_study, run_study, stored_spec
from mpsearch.trial import run_trial

TOY = Path(__file__).resolve().parents[1] / "toy_plugin.py"


@pytest.fixture
def toy_host():
    return PluginHost([str(TOY)], entry_points=False)


def driver_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpsearch.cli", *args]


def driver_env() -> dict[str, str]:
    return {**os.environ, "MPSEARCH_COMPILE": "off"}


def test_a_study_round_trips_through_the_storage(storage_url, toy_study_spec, toy_host):
    spec = load_spec(toy_study_spec("trip", n_trials=2, enqueue="[{bits = 2}]"), toy_host)
    create_study(spec, storage_url, toy_host)
    run_study("trip", storage_url, toy_host, progress=False)

    # a fresh connection, as `mpsearch study show` or optuna-dashboard would open it
    study = optuna.load_study(study_name="trip", storage=storage_url)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"toy.bits": 2}  # the enqueued point, first
    # the stored spec is the spec, its plugin file pinned by the sha256 of its content
    stored = stored_spec(study, toy_host).to_dict()
    assert stored.pop("plugins") == [f"{TOY}#sha256={hashlib.sha256(TOY.read_bytes()).hexdigest()}"]
    assert stored == {k: v for k, v in spec.to_dict().items() if k != "plugins"}
    assert study.user_attrs["objectives"] == ["accuracy", "bitops"]
    assert study.user_attrs["units"] == {"bitops": "GBitOPs"}
    assert study.user_attrs["runs"][0]["trials"] == 2
    for t in trials:
        assert t.user_attrs["strategy"] == "toy" and "fail_reason" not in t.user_attrs
        assert 0 <= t.user_attrs["test_accuracy"] <= 1
        assert t.user_attrs["history"] and "val_accuracy" in t.user_attrs["history"][-1]
        assert t.system_attrs[DRIVER_ATTR].endswith(":" + str(os.getpid()))
        assert t.system_attrs[GRACE_ATTR] == 10.0
    # the stored values are exactly the trial's: the same trial re-run in-process gives them
    again = run_trial(spec, 1, "toy", {"bits": trials[1].params["toy.bits"], "fraction": 1.0,
                                       "behaviour": "ok"})
    assert again.values["bitops"] == trials[1].values[1]
    assert abs(again.values["accuracy"] - trials[1].values[0]) <= 1e-6
    shown = CliRunner().invoke(cli, ["--plugin", str(TOY), "study", "show", "trip",
                                     "--storage", storage_url])
    assert shown.exit_code == 0 and "GBitOPs" in shown.output, shown.output


def test_two_drivers_run_one_study_together(storage_url, toy_study_spec, tmp_path):
    spec = toy_study_spec("duo", n_trials=6, enqueue="[{bits = 4}]")
    created = CliRunner().invoke(cli, ["study", "create", str(spec), "--storage", storage_url,
                                       "--no-run"])
    assert created.exit_code == 0, created.output
    drivers = [subprocess.Popen(driver_command("study", "run", "duo", "--storage", storage_url,
                                               "--executor", "local", "--quiet",
                                               "--trust-spec-plugins"),
                                cwd=tmp_path, env=driver_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    for driver, (out, err) in zip(drivers, outputs):
        assert driver.returncode == 0, err[-3000:]
        assert "Pareto front" in out or "front" in out.lower(), out

    trials = optuna.load_study(study_name="duo", storage=storage_url).trials
    assert [t.number for t in trials] == list(range(len(trials)))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6  # exactly n_trials, none lost
    assert not any(t.user_attrs.get(ORPHAN) for t in trials)  # none failed by the other driver
    enqueued = [t for t in trials if t.system_attrs.get("fixed_params") == {"toy.bits": 4}]
    assert [t.number for t in enqueued] == [0]  # the queued baseline ran once
    claimed_by = {t.system_attrs[DRIVER_ATTR] for t in trials}
    assert len(claimed_by) == 2, claimed_by  # both drivers ran trials
    assert {d.pid for d in drivers} == {int(n.rsplit(":", 1)[1]) for n in claimed_by}


def test_the_study_lock_excludes_a_second_holder(storage_url):
    storage = open_storage(storage_url, create=True)
    study = optuna.create_study(study_name="lock", storage=storage)
    other = open_storage(storage_url)  # a second driver's own connection pool
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait()
        with study_lock(other, study._study_id):
            order.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with study_lock(storage, study._study_id):
        order.append("first in")
        held.set()
        time.sleep(1.0)  # the second holder waits all this time
        order.append("first out")
    thread.join(timeout=30)
    assert order == ["first in", "first out", "second in"]


def test_heartbeats_keep_a_trial_alive_and_their_absence_fails_it(storage_url):
    storage = open_storage(storage_url, create=True)
    study = optuna.create_study(study_name="beat", storage=storage)
    live, dead, own_grace = study.ask(), study.ask(), study.ask()
    live.suggest_int("x", 0, 9)
    dead.suggest_int("x", 0, 9)
    study._storage.set_trial_system_attr(own_grace._trial_id, GRACE_ATTR, 600.0)
    heartbeat = Heartbeat(study._storage, interval=0.3)
    with heartbeat:
        heartbeat.add(live._trial_id)
        heartbeat.add(dead._trial_id)
        heartbeat.add(own_grace._trial_id)
        heartbeat.discard(dead._trial_id)  # its driver "dies": no more beats
        heartbeat.discard(own_grace._trial_id)
        assert stale_trials(study._storage, study._study_id, grace=1.0) == {}
        time.sleep(3.2)  # SQLite stamps heartbeats to the second
        stale = stale_trials(study._storage, study._study_id, grace=1.0)
        assert list(stale) == [dead._trial_id], stale
        assert "no heartbeat for" in stale[dead._trial_id]
        assert reconcile(study, grace=1.0) == [dead.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:3]] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
    assert "left RUNNING by a driver that stopped (no heartbeat for" in trials[1].user_attrs["fail_reason"]
    assert trials[1].user_attrs[ORPHAN] is True
    retry = trials[3]
    assert retry.state == TrialState.WAITING and retry.user_attrs[RETRY_OF] == dead.number
    assert retry.system_attrs["fixed_params"] == trials[1].params
    # a trial that never had a heartbeat is judged by its start
    silent = study.ask()
    assert silent._trial_id not in stale_trials(study._storage, study._study_id, grace=2.0)
    time.sleep(2.5)
    assert "without a heartbeat" in stale_trials(study._storage, study._study_id, grace=2.0)[silent._trial_id]


def test_an_unreachable_postgresql_server_gives_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://mpsearch:secret@127.0.0.1:{port}/studies"
    result = CliRunner().invoke(cli, ["study", "run", "x", "--storage", url])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: storage 'postgresql+psycopg://mpsearch:***@127.0.0.1:{port}/studies' "
                               f"cannot be reached: ")
    assert "Connection refused" in lines[0] and "secret" not in lines[0]


def test_a_missing_postgresql_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(MpsearchError) as err:
        open_storage("postgresql+psycopg://u@127.0.0.1:5432/db")
    message = str(err.value)
    assert "\n" not in message
    assert "the database driver 'psycopg' is not installed" in message
    assert "pip install 'mpsearch[postgres]'" in message


@pytest.mark.parametrize("url, message", [
    ("postgress://u@h/db", "SQLAlchemy knows no database 'postgress'"),
    ("not a url", "is not a database URL"),
])
def test_bad_storage_urls_give_one_line(url, message):
    with pytest.raises(MpsearchError, match=message):
        load_study(url, "x")


def test_a_grace_period_shorter_than_the_heartbeat_is_refused(tmp_path, toy_study_spec):
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    runner = CliRunner()
    assert runner.invoke(cli, ["study", "create", str(toy_study_spec("g", n_trials=1)), "--storage", url,
                               "--no-run"]).exit_code == 0
    result = runner.invoke(cli, ["study", "run", "g", "--storage", url, "--heartbeat", "5", "--grace", "2",
                                 "--trust-spec-plugins"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: the grace period (2 s) must be longer than the heartbeat "
                                     "interval (5 s), and both positive.")
    assert optuna.load_study(study_name="g", storage=url).trials == []


def test_a_late_result_waits_for_the_lock_and_is_dropped_whole(storage_url, toy_study_spec, toy_host,
                                                               capfd):
    """A driver records its result while another, holding the study's lock, fails the trial as
    stale: the result waits for the lock, then is dropped. The trial ends FAIL as an orphan,
    with none of the late result's attributes (never COMPLETE with ``orphaned``, never a
    traceback)."""
    from mpsearch.execution.driver import Driver, orphan
    from mpsearch.execution.tell import tell

    spec = load_spec(toy_study_spec("late", n_trials=1), toy_host)
    study = create_study(spec, storage_url, toy_host)
    driver = Driver(study, 1)
    with driver.claiming() as allowed:
        assert allowed
        trial = study.ask()
        driver.started(trial)
    recorder = threading.Thread(target=tell, args=(study, trial, ["accuracy", "bitops"],
                                                   {"accuracy": 0.9, "bitops": 0.1},
                                                   {"test_accuracy": 0.88}),
                                kwargs={"driver": driver})
    with study_lock(study._storage, study._study_id):  # another driver, reconciling
        recorder.start()
        time.sleep(1.0)
        assert study._storage.get_trial(trial._trial_id).user_attrs == {}  # it waits
        assert orphan(study, trial._trial_id, "no heartbeat (test)") == trial.number
    recorder.join(timeout=60)
    driver.heartbeat.stop()
    (late, retry) = optuna.load_study(study_name="late", storage=storage_url).trials
    assert late.state == TrialState.FAIL and late.values is None
    assert late.user_attrs[ORPHAN] is True and "test_accuracy" not in late.user_attrs
    assert retry.state == TrialState.WAITING and retry.user_attrs[RETRY_OF] == late.number
    assert "was failed by another driver" in capfd.readouterr().err


def test_two_creates_of_one_study_at_once_give_one_study_and_one_line_errors(storage_url,
                                                                              toy_study_spec,
                                                                              toy_host):
    spec = load_spec(toy_study_spec("twin", n_trials=1), toy_host)
    open_storage(storage_url, create=True)  # the schema exists; only the study is raced for
    start = threading.Barrier(6)
    results: list[object] = []

    def create() -> None:
        start.wait()
        try:
            results.append(create_study(spec, storage_url, toy_host).study_name)
        except MpsearchError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results.count("twin") == 1, results
    assert all(r.startswith("study 'twin' already exists in ") for r in results if r != "twin")
    assert optuna.get_all_study_names(storage_url) == ["twin"]


def test_a_symlink_to_the_database_shares_its_lock(tmp_path):
    real = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    storage = open_storage(real, create=True)
    study = optuna.create_study(study_name="lock", storage=storage)
    (tmp_path / "link.db").symlink_to(tmp_path / "mpsearch.db")
    other = open_storage(f"sqlite:///{tmp_path / 'link.db'}")
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait()
        with study_lock(other, study._study_id):
            order.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with study_lock(storage, study._study_id):
        order.append("first in")
        held.set()
        time.sleep(1.0)
        order.append("first out")
    thread.join(timeout=30)
    assert order == ["first in", "first out", "second in"]
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["mpsearch.db.lock"]


@pytest.mark.parametrize("url, without, shown", [
    ("postgresql+psycopg://u:pw%40x@db.example:5432/studies?sslmode=require",
     "postgresql+psycopg://u@db.example:5432/studies?sslmode=require",
     "postgresql+psycopg://u:***@db.example:5432/studies?sslmode=require"),
    ("postgresql+psycopg://u@db.example/studies", "postgresql+psycopg://u@db.example/studies",
     "postgresql+psycopg://u@db.example/studies"),
    ("sqlite:///mpsearch.db", "sqlite:///mpsearch.db", "sqlite:///mpsearch.db"),
])
def test_urls_lose_their_password_for_messages_and_records(url, without, shown):
    from mpsearch.storage import password_of, shown_url, url_without_password

    assert url_without_password(url) == without and shown_url(url) == shown
    assert password_of(url) == ("pw@x" if ":pw" in url else None)
