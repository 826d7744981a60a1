"""A storage password never leaves the driver: a study run on a real PostgreSQL server with a
sentinel password, every line it printed and every file it wrote searched for it.

The server comes from ``MPSEARCH_TEST_POSTGRES`` (see ``tests/conftest.py``). The test makes a
role whose password is :data:`SENTINEL` and a database it owns, and drives the study through
the command line as a user would: the password in the spec's ``storage``, on the command line,
in ``MPSEARCH_STORAGE`` and in ``PGPASSWORD``; a run interrupted with Ctrl-C while its trial
holds a checkpoint; a run on Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import POSTGRES_ENV

SENTINEL = "Sentinel-pw-4b1d9e"


@pytest.fixture
def sentinel_url():
    """A database on the test server owned by a role whose password is SENTINEL."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL tests, but {POSTGRES_ENV} is not set")
        pytest.skip(f"{POSTGRES_ENV} is not set (a PostgreSQL URL; .ci/run starts a server)")
    import sqlalchemy

    suffix = uuid.uuid4().hex[:10]
    role, database = f"mpsearch_sentinel_{suffix}", f"mpsearch_secret_{suffix}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{SENTINEL}'"))
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{database}" OWNER {role}'))
        yield (sqlalchemy.engine.make_url(base)
               .set(username=role, password=SENTINEL, database=database)
               .render_as_string(hide_password=False))
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
    finally:
        admin.dispose()


def spec(folder: Path, url: str) -> Path:
    """A uniform-QAT study whose spec names the storage, password included; 2 epochs a trial,
    so a trial holds a checkpoint between them."""
    path = folder / "secret.toml"
    path.write_text(textwrap.dedent(f"""\
        [study]
        name = "secret"
        objectives = ["accuracy", "bitops"]
        sampler = "random"
        n_trials = 2
        storage = "{url}"
        [model]
        name = "lenet5"
        [data]
        name = "mnist-mini"
        train_subset = 2000
        [training]
        epochs = 3
        batch_size = 100
        [[strategy]]
        name = "uniform"
        space.bits = [4, 8]
        [resources]
        executor = "local"
        """))
    return path


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """Ray's session folder (logs, sockets): short, since socket paths are limited to 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="mpsr-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Session:
    """Runs mpsearch commands in one folder and keeps every line they print."""

    def __init__(self, folder: Path, ray_tmp: Path):
        self.folder = folder
        self.printed: list[tuple[str, str]] = []  # (command, output)
        self.env = {**os.environ, "MPSEARCH_COMPILE": "off", "RAY_TMPDIR": str(ray_tmp),
                    "HOME": str(folder / "home")}
        for key in ("MPSEARCH_STORAGE", "PGPASSWORD"):
            self.env.pop(key, None)
        (folder / "home").mkdir()

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mpsearch.cli", *args]

    def run(self, *args: str, env: dict | None = None, expect: int = 0) -> str:
        done = subprocess.run(self.command(*args), cwd=self.folder, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=600, check=False)
        self.printed.append((" ".join(args), done.stdout + done.stderr))
        assert done.returncode == expect, done.stdout + done.stderr[-3000:]
        return done.stdout + done.stderr

    def interrupt_when(self, exists: Callable, *args: str) -> str:
        """Start a command, and send Ctrl-C once ``exists()`` (a file it writes) is true."""
        proc = subprocess.Popen(self.command(*args), cwd=self.folder, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        try:
            while not exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.printed.append((" ".join(args), out + err))
        assert proc.returncode == 130, out + err
        return out + err


def checkpoint(folder: Path) -> Path | None:
    found = sorted((folder / "mpsearch-studies").glob("secret-*/trial-*/checkpoint/last.pt"))
    return found[0] if found else None


def stored_text(url: str) -> list[str]:
    """Every attribute the database holds for its studies and trials, as stored (JSON text)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for table in ("study_user_attributes", "study_system_attributes",
                                         "trial_user_attributes", "trial_system_attributes")
                    for row in conn.execute(sqlalchemy.text(f"SELECT value_json FROM {table}"))]
    finally:
        engine.dispose()


def files_holding(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
            and needle in p.read_bytes()]


@pytest.mark.slow
def test_a_storage_password_is_never_printed_stored_or_written(sentinel_url, tmp_path, ray_tmp):
    session = Session(tmp_path, ray_tmp)
    bare = sentinel_url.replace(f":{SENTINEL}@", "@")
    assert bare != sentinel_url
    # the password in the spec's storage; Ctrl-C while the first trial holds a checkpoint
    held = tmp_path / "held-last.pt"

    def holds_a_checkpoint() -> bool:
        found = checkpoint(tmp_path)
        if found is None:
            return False
        shutil.copyfile(found, held)  # what a trial's checkpoint holds, kept for the search
        return True

    stopped = session.interrupt_when(holds_a_checkpoint, "study", "create",
                                     str(spec(tmp_path, sentinel_url)))
    assert f"continue the study with: mpsearch study run secret --storage {bare}" in stopped
    session.run("study", "create", str(tmp_path / "secret.toml"), expect=1)  # already exists
    # the password on the command line, then kept off it: MPSEARCH_STORAGE, PGPASSWORD
    session.run("study", "run", "secret", "--storage", sentinel_url, "--n-trials", "1", "--quiet")
    session.run("study", "run", "secret", "--quiet", env={"MPSEARCH_STORAGE": sentinel_url})
    listed = session.run("study", "list", "--storage", bare, env={"PGPASSWORD": SENTINEL})
    assert "secret" in listed
    session.run("study", "show", "secret", "--all", env={"MPSEARCH_STORAGE": sentinel_url})
    session.run("study", "export", "secret", "--storage", sentinel_url, "-o", "secret.csv")
    session.run("study", "plot", "secret", "--storage", sentinel_url, "-o", "plots")
    session.run("study", "list", "--storage", sentinel_url.replace("/mpsearch_secret_", "/none_"),
                expect=1)  # a database that does not exist: the error names the URL

    import optuna

    trials = optuna.load_study(study_name="secret", storage=sentinel_url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["orphaned"] is True and trials[1].user_attrs["retry_of"] == 0
    assert trials[1].user_attrs["checkpoints"]["resumed_at"] is not None  # from the held checkpoint
    assert held.stat().st_size > 0 and checkpoint(tmp_path) is None  # kept, then deleted
    assert len(list(tmp_path.glob("mpsearch-studies/secret-*/trial-*/model.pt"))) == 2

    shown = [(command, line) for command, output in session.printed
             for line in output.splitlines() if SENTINEL in line]
    assert shown == [], shown
    assert [text for text in stored_text(sentinel_url) if SENTINEL in text] == []
    assert files_holding(tmp_path, SENTINEL) == [str(tmp_path / "secret.toml")]  # the user's own
    assert files_holding(ray_tmp, SENTINEL) == []


@pytest.mark.slow
@pytest.mark.ray
def test_ray_files_hold_no_storage_password(sentinel_url, tmp_path, ray_tmp):
    session = Session(tmp_path, ray_tmp)
    session.run("study", "create", str(spec(tmp_path, sentinel_url)), "--no-run")
    session.run("study", "run", "secret", "--storage", sentinel_url, "--executor", "ray",
                "--n-trials", "1", "--quiet")
    pickled = list(tmp_path.glob("mpsearch-studies/secret-*/ray/*/tuner.pkl"))
    assert len(pickled) == 1 and pickled[0].stat().st_size > 0
    assert [line for _, output in session.printed for line in output.splitlines()
            if SENTINEL in line] == []
    assert files_holding(tmp_path, SENTINEL) == [str(tmp_path / "secret.toml")]
    assert list(ray_tmp.rglob("*.log")) and files_holding(ray_tmp, SENTINEL) == []
