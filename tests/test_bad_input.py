"""Bad input, as one table: each case is a command a user might type with something wrong.

Every case runs against a copy of a study database that already holds three
COMPLETE trials, and must:

- fail with the exit status it states (1 for an error, 130 for Ctrl-C), or succeed
  where only a trial fails (the trial then FAILs with its reason recorded);
- say what is wrong in exactly one line on stderr, naming the file, key, plugin or
  name (and, for an unknown name, the close match); no traceback unless ``--debug``;
- leave the database intact: ``PRAGMA integrity_check`` is ok, the existing study's
  trials are identical row for row, and a command that fails adds no study.

To add a case, append a :class:`Case` to :data:`CASES`: the arguments (``{dir}`` is
the case's own folder, ``{url}`` the copied database), the words the error line must
hold, and, where needed, ``prepare`` (files to write first), ``check`` (assertions
afterwards) and ``how`` (:func:`in_process`, :func:`in_a_process` or a runner of its own).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
from test_cli import run
from test_study import TOY, toy_spec

from mpsearch.host import PluginHost
from mpsearch.spec import load_spec
from mpsearch.study import create_study, run_study

BAD_PLUGINS = Path(__file__).with_name("bad_plugins")
FLAKY = BAD_PLUGINS / "flaky.py"
BASE = "base"  # the study every case must leave as it was
ENV = {**os.environ, "MPSEARCH_COMPILE": "off"}


class Outcome(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


# -- how a case runs --------------------------------------------------------------------

def in_process(args: list[str], folder: Path) -> Outcome:
    """Through click's test runner (fast); an exception that escapes the CLI fails the test."""
    result = run(*args)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def in_a_process(args: list[str], folder: Path) -> Outcome:
    """As a user runs it: ``python -m mpsearch.cli`` in its own process."""
    done = subprocess.run([sys.executable, "-m", "mpsearch.cli", *args], cwd=folder, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


def trial_states(db: Path, study: str) -> list[tuple[int, str]]:
    """``(number, state)`` of a study's trials, read without writing (the driver may be writing)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT t.number, t.state FROM trials t JOIN studies s USING (study_id) "
                           "WHERE s.study_name = ? ORDER BY t.number", (study,)).fetchall()
    finally:
        con.close()


def interrupted(args: list[str], folder: Path) -> Outcome:
    """Ctrl-C (SIGINT) to the driver once trial 0 is COMPLETE and trial 1 is inside its strategy.

    Trial 1 is the flaky strategy's ``hold``: it creates ``{dir}/hold.holding``, then
    waits while ``{dir}/hold`` exists, so the signal surely lands in a running trial,
    where a user's Ctrl-C mostly lands. The file is removed afterwards.
    """
    proc = subprocess.Popen([sys.executable, "-m", "mpsearch.cli", *args], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                states = trial_states(folder / "mpsearch.db", "held")
            except sqlite3.OperationalError:  # locked by a write in progress
                states = []
            if states[:2] == [(0, "COMPLETE"), (1, "RUNNING")] and (folder / "hold.holding").exists():
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        (folder / "hold").unlink(missing_ok=True)
    return Outcome(proc.returncode, stdout, stderr)


# -- what a case is ---------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        args: the command line after ``mpsearch``; ``{dir}`` and ``{url}`` are filled in.
        message: words the one line on stderr must hold (each, in any order).
        exit: the expected exit status; 0 where only a trial fails.
        prepare: writes what the command needs into the case's folder.
        check: more assertions afterwards, given the folder, the database URL and the outcome.
        how: :func:`in_process`, :func:`in_a_process` or :func:`interrupted`.
        traceback: ``--debug``: stderr ends with a traceback instead of one line.
        marks: pytest marks, e.g. an ``xfail`` that names the change still to make.
    """

    id: str
    args: list[str]
    message: tuple[str, ...] = ()
    exit: int = 1
    prepare: Callable[[Path], None] | None = None
    check: Callable[[Path, str, Outcome], None] | None = None
    how: Callable[[list[str], Path], Outcome] = in_process
    traceback: bool = False
    marks: tuple = field(default=())


def fill(text: str, folder: Path) -> str:
    return text.replace("{dir}", str(folder)).replace("{url}", f"sqlite:///{folder / 'mpsearch.db'}")


def spec(*replacements: tuple[str, str], name: str = "bad", plugin: Path = TOY, **toy) -> Callable:
    """Write ``{dir}/bad.toml``: the tests' toy spec with some text replaced."""

    def prepare(folder: Path) -> None:
        path = toy_spec(folder, name=name, **toy)
        text = path.read_text().replace(str(TOY), str(plugin))
        path.unlink()
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, fill(new, folder), 1)
        (folder / "bad.toml").write_text(text)

    return prepare


def flaky(*behaviours: str) -> Callable:
    """A spec whose trials run the flaky strategy's ``behaviours``, in order."""
    points = ", ".join(f'{{behaviour = "{b}"}}' for b in behaviours)
    return spec(('name = "toy"', f'name = "flaky"\nenqueue = [{points}]'),
                plugin=FLAKY, n_trials=len(behaviours))


def assignment(bits: int | None = None) -> Callable:
    """Write ``{dir}/lenet5.json``, LeNet-5's 8-bit assignment, with conv1's weights at ``bits``."""

    def prepare(folder: Path) -> None:
        path = folder / "lenet5.json"
        assert run("cost", "lenet5", "--save-assignment", str(path)).exit_code == 0
        if bits is not None:
            data = json.loads(path.read_text())
            data["groups"]["conv1:weight"]["bits"] = bits
            path.write_text(json.dumps(data))

    return prepare


def write(name: str, content: str | bytes) -> Callable:
    def prepare(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)

    return prepare


def both(*steps: Callable) -> Callable:
    def prepare(folder: Path) -> None:
        for step in steps:
            step(folder)

    return prepare


def damaged_copy(folder: Path) -> None:
    """The database with its header intact and two pages of its tables overwritten."""
    data = bytearray((folder / "mpsearch.db").read_bytes())
    data[5000:9000] = b"\x07" * 4000
    (folder / "damaged.db").write_bytes(bytes(data))


def not_optuna(folder: Path) -> None:
    con = sqlite3.connect(folder / "other.db")
    con.execute("CREATE TABLE photos (name TEXT)")
    con.commit()
    con.close()


CHECKPOINTED = """\
[study]
name = "ck"
objectives = ["accuracy", "bitops"]
n_trials = 1
[model]
name = "lenet5"
[data]
name = "mnist-mini"
train_subset = 500
[training]
epochs = 1
[[strategy]]
name = "uniform"
space.bits = 4
[resources]
executor = "local"
"""


def corrupt_checkpoint(folder: Path) -> None:
    """Study ``ck`` with trial 0 left RUNNING by a dead driver, and garbage for its checkpoint."""
    import optuna

    (folder / "ck.toml").write_text(CHECKPOINTED)
    url = fill("{url}", folder)
    assert run("study", "create", str(folder / "ck.toml"), "--storage", url, "--no-run").exit_code == 0
    optuna.load_study(study_name="ck", storage=url).ask()
    last = folder / "mpsearch-studies" / "ck" / "trial-00000" / "checkpoint" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 half a zip file")


def restarted_from_scratch(folder: Path, url: str, outcome: Outcome) -> None:
    orphan, retry = trials(url, "ck")
    assert orphan.state.name == "FAIL" and retry.user_attrs["retry_of"] == 0
    assert retry.state.name == "COMPLETE"
    warning = retry.user_attrs["checkpoint_warning"]
    assert "trial-00000/checkpoint/last.pt" in warning and "unreadable or corrupt" in warning
    assert "\n" not in warning and "restarted from scratch" in warning
    assert not (folder / "mpsearch-studies" / "ck" / "trial-00000" / "checkpoint").exists()


def trials(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=url).trials


def failed_then_complete(*words: str) -> Callable:
    """Trial 0 FAILed with a reason holding ``words``; the study went on to complete trial 1."""

    def check(folder: Path, url: str, outcome: Outcome) -> None:
        first, second = trials(url, "bad")
        assert first.state.name == "FAIL" and first.values is None
        reason = first.user_attrs["fail_reason"]
        assert all(w in reason for w in words), reason
        assert second.state.name == "COMPLETE" and "fail_reason" not in second.user_attrs

    return check


def resumed(folder: Path, url: str, outcome: Outcome) -> None:
    """After Ctrl-C: trial 0 kept, trial 1 re-queued at once; the command the message gives
    finishes the study."""
    assert snapshot(folder / "mpsearch.db")[0] == "ok"
    before = trials(url, "held")
    assert [t.state.name for t in before[:2]] == ["COMPLETE", "FAIL"]
    assert [t.state.name for t in before if t.user_attrs.get("retry_of") == 1] == ["WAITING"]
    message = outcome.stderr.strip()
    command = shlex.split(message.split("continue the study with: ", 1)[1])
    assert command[:1] == ["mpsearch"] and "--executor" in command
    result = run(*command[1:], "--quiet")
    assert result.exit_code == 0, result.output
    after = trials(url, "held")
    assert after[0].values == before[0].values and after[0].datetime_complete == before[0].datetime_complete
    assert [t.state.name for t in after].count("COMPLETE") == 3
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in after)


def weights(kind: str) -> Callable:
    """Write ``{dir}/w.pt``: LeNet-5's state dict, broken as ``kind`` says."""

    def prepare(folder: Path) -> None:
        import argparse

        import torch

        state = PluginHost(entry_points=False).models.get("lenet5").create(10, (1, 28, 28)).state_dict()
        if kind == "missing-key":
            del state["fc2.bias"]
        elif kind == "wrong-shape":
            state["fc2.weight"] = torch.zeros(5, 500)
        elif kind == "not-a-state-dict":
            state = [1, 2, 3]
        elif kind == "pickled-object":
            state = {"model": argparse.Namespace(layers=4)}
        torch.save(state, folder / "w.pt")

    return prepare


WITH_WEIGHTS = ('name = "lenet5"', 'name = "lenet5"\nweights = "w.pt"')


def weights_changed_after_creation(folder: Path) -> None:
    """Study ``weighted`` created (not run) in ``w.db`` with ``w.pt``, then the file overwritten."""
    import torch

    weights("ok")(folder)
    spec(WITH_WEIGHTS, name="weighted")(folder)
    result = run("study", "create", str(folder / "bad.toml"), "--storage", fill("sqlite:///{dir}/w.db", folder),
                 "--no-run")
    assert result.exit_code == 0, result.output
    state = torch.load(folder / "w.pt", weights_only=True)
    state["fc2.bias"] += 1
    torch.save(state, folder / "w.pt")


def no_trial_ran(folder: Path, url: str, outcome: Outcome) -> None:
    assert trials(fill("sqlite:///{dir}/w.db", folder), "weighted") == []
    assert not (folder / "mpsearch-studies" / "weighted" / "float-start.pt").exists()


# A plugin file that is not Python; written at test time, so that linters never read it.
SYNTAX_ERROR = '"""A plugin with a syntax error."""\n\ndef register_strategies(register:\n    pass\n'
CREATE = ["study", "create", "{dir}/bad.toml", "--storage", "{url}", "--executor", "local", "--quiet"]
SHOW = ["study", "show", BASE, "--storage"]

CASES = [
    # -- the spec ----------------------------------------------------------------------
    Case("spec-malformed-toml", CREATE, ("bad.toml", "not valid TOML", "line 13"),
         prepare=spec(("[training]", "[training"))),
    Case("spec-unknown-key", CREATE, ("bad.toml", "unknown key(s) batch_szie in [training]",
                                      "valid keys: batch_size"),
         prepare=spec(("batch_size = 100", "batch_size = 100\nbatch_szie = 50"))),
    Case("spec-wrong-type", CREATE, ("bad.toml", "[study] n_trials must be an integer", "'three'"),
         prepare=spec(("n_trials = 3", 'n_trials = "three"'))),
    Case("spec-unknown-strategy", CREATE, ("bad.toml", "[strategy[0]] name",
                                           "unknown strategy 'bitprunning'",
                                           "Did you mean 'bitpruning'?"),
         prepare=spec(('name = "toy"', 'name = "bitprunning"'))),
    Case("spec-unknown-objective", CREATE, ("bad.toml", "[study] objectives[1]",
                                            "unknown objective 'bitop'", "Did you mean 'bitops'?"),
         prepare=spec(('"bitops"]', '"bitop"]'))),
    Case("spec-unknown-backend", CREATE, ("bad.toml", "[backend] name", "unknown backend 'generc'",
                                          "Did you mean 'generic'?"),
         prepare=spec(("[resources]", '[backend]\nname = "generc"\n[resources]'))),
    Case("spec-unknown-model", CREATE, ("bad.toml", "[model] name", "unknown model 'lenet6'",
                                        "Did you mean 'lenet5'"),
         prepare=spec(('name = "lenet5"', 'name = "lenet6"'))),
    Case("spec-unknown-dataset", CREATE, ("bad.toml", "[data] name", "unknown dataset 'mnist-mni'",
                                          "Did you mean 'mnist-mini'"),
         prepare=spec(('name = "mnist-mini"', 'name = "mnist-mni"'))),
    Case("spec-bits-outside-0-32", CREATE, ("bad.toml", "strategy[0].space.bits",
                                            "40 is not a width", "1-32"),
         prepare=spec(('name = "toy"', 'name = "uniform"\nspace.bits = [4, 40]'))),
    Case("spec-plugin-file-missing", CREATE, ("plugin file", "missing_plugin.py", "does not exist"),
         prepare=spec((f'plugins = ["{TOY}"]', 'plugins = ["missing_plugin.py"]'))),
    # -- datasets ----------------------------------------------------------------------
    Case("data-folder-missing", CREATE, ("bad.toml", "[data] mnist", "no-such-folder",
                                         "is not a folder", "ROOT/MNIST/raw", "[data] root"),
         prepare=spec(('name = "mnist-mini"', 'name = "mnist"\nroot = "{dir}/no-such-folder"'))),
    Case("data-wrong-layout", CREATE, ("bad.toml", "[data] imagefolder", "has no train folder",
                                       "expected ROOT/{train,test}/<class>/<image files>"),
         prepare=both(write("photos/cat/1.png", b"not read"),
                      spec(('name = "mnist-mini"', 'name = "imagefolder"\nroot = "{dir}/photos"')))),
    Case("data-mnist-compressed-only", CREATE, ("bad.toml", "[data] mnist",
                                                "lacks train-images-idx3-ubyte"),
         prepare=both(write("mnist/MNIST/raw/train-images-idx3-ubyte.gz", b"gz"),
                      spec(('name = "mnist-mini"', 'name = "mnist"\nroot = "{dir}/mnist"')))),
    Case("data-cifar10-batches-incomplete", CREATE, ("bad.toml", "[data] cifar10",
                                                     "lack data_batch_2", "test_batch"),
         prepare=both(write("cifar/cifar-10-batches-py/data_batch_1", b"x"),
                      spec(('name = "mnist-mini"', 'name = "cifar10"\nroot = "{dir}/cifar"')))),
    Case("data-unknown-option", CREATE, ("bad.toml", "[data] mnist-mini options",
                                         "unknown dataset option 'image_size'"),
         prepare=spec(("train_subset = 1000", "train_subset = 1000\noptions = {image_size = 64}"))),
    # -- assignments -------------------------------------------------------------------
    Case("assignment-bits-outside-0-32", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "group 'conv1:weight'", "33 bits is outside 0-32"), prepare=assignment(33)),
    Case("assignment-for-another-model", ["cost", "resnet20", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "made for model 'lenet5'", "does not match the model 'resnet20'"),
         prepare=assignment()),
    # -- storage -----------------------------------------------------------------------
    Case("storage-folder-missing", [*CREATE[:3], "--storage", "sqlite:///{dir}/nowhere/x.db"],
         ("sqlite:///", "nowhere", "does not exist"), prepare=spec()),
    Case("storage-not-a-url", [*SHOW, "not-a-url"], ("storage 'not-a-url'", "not a database URL")),
    Case("storage-server-unreachable", [*SHOW, "postgresql+psycopg://mpsearch@127.0.0.1:1/none"],
         ("storage 'postgresql+psycopg://mpsearch@127.0.0.1:1/none'", "cannot be")),
    Case("storage-file-not-a-database", [*SHOW, "sqlite:///{dir}/notes.db"],
         ("notes.db", "is not an SQLite database"), prepare=write("notes.db", "my notes\n")),
    Case("storage-sqlite-but-not-optuna", [*SHOW, "sqlite:///{dir}/other.db"],
         ("other.db", "not an Optuna one"), prepare=not_optuna),
    Case("storage-damaged-database", [*SHOW, "sqlite:///{dir}/damaged.db"],
         ("damaged.db", "damaged"), prepare=damaged_copy),
    Case("study-unknown-name", ["study", "run", "bsae", "--storage", "{url}"],
         ("unknown study 'bsae'", "Did you mean 'base'?")),
    Case("study-already-exists", [*CREATE[:2], "{dir}/base.toml", *CREATE[3:]],
         ("study 'base' already exists", "mpsearch study run base"),
         prepare=lambda folder: toy_spec(folder, name=BASE)),
    # -- plugins -----------------------------------------------------------------------
    Case("plugin-raises-importerror", ["--plugin", str(BAD_PLUGINS / "raises_import_error.py"),
                                       "study", "run", BASE, "--storage", "{url}"],
         ("raises_import_error.py", "failed to import", "ModuleNotFoundError",
          "mpsearch_no_such_dependency")),
    Case("plugin-syntax-error", ["--plugin", "{dir}/broken.py", "study", "run", BASE,
                                 "--storage", "{url}"],
         ("broken.py", "failed to import", "SyntaxError", "line 3"),
         prepare=write("broken.py", SYNTAX_ERROR)),
    Case("plugin-module-missing", ["--plugin", "mpsearch_no_such_plugin", *SHOW, "{url}"],
         ("mpsearch_no_such_plugin", "failed to import", "No module named")),
    Case("plugin-duplicate-name", ["--plugin", str(BAD_PLUGINS / "duplicate.py"), *SHOW, "{url}"],
         ("strategy 'uniform' is registered twice", "mpsearch.plugins.strategy_uniform",
          "duplicate.py")),
    # -- trials that fail: the trial FAILs with its reason, the study goes on ------------
    Case("trial-strategy-raises", CREATE, exit=0, prepare=flaky("raise", "ok"),
         check=failed_then_complete("strategy 'flaky' raised ValueError",
                                    "broke in the middle of its trial")),
    Case("trial-loss-nan", CREATE, exit=0,
         prepare=spec(('name = "toy"', ('name = "toy"\nspace.behaviour = ["ok", "nan"]\n'
                                         'enqueue = [{behaviour = "nan"}, {behaviour = "ok"}]')),
                      n_trials=2),
         check=failed_then_complete("NaN", "lower the learning rate")),
    Case("trial-out-of-memory", CREATE, exit=0, prepare=flaky("oom", "ok"),
         check=failed_then_complete("out of memory", "Lower [training] batch_size")),
    Case("checkpoint-corrupt", ["study", "run", "ck", "--storage", "{url}", "--quiet",
                                "--heartbeat", "0.05", "--grace", "0.1"],
         exit=0, prepare=corrupt_checkpoint, check=restarted_from_scratch),
    # -- the command line --------------------------------------------------------------
    # -- the float start's weights -------------------------------------------------------
    Case("weights-file-missing", CREATE, ("w.pt", "does not exist"), prepare=spec(WITH_WEIGHTS)),
    Case("weights-missing-key", CREATE, ("w.pt", "does not fit the model", "missing key(s) fc2.bias"),
         prepare=both(weights("missing-key"), spec(WITH_WEIGHTS))),
    Case("weights-wrong-shape", CREATE, ("w.pt", "wrong shape(s) fc2.weight [5, 500]",
                                         "the model's is [10, 500]"),
         prepare=both(weights("wrong-shape"), spec(WITH_WEIGHTS))),
    Case("weights-not-a-state-dict", CREATE, ("w.pt", "is not a state dict", "model.state_dict()"),
         prepare=both(weights("not-a-state-dict"), spec(WITH_WEIGHTS))),
    Case("weights-pickled-object", CREATE, ("w.pt", "cannot be read", "weights_only loading refuses"),
         prepare=both(weights("pickled-object"), spec(WITH_WEIGHTS))),
    Case("weights-changed-after-creation", ["study", "run", "weighted", "--storage", "sqlite:///{dir}/w.db",
                                            "--executor", "local", "--quiet"],
         ("w.pt", "has changed since study 'weighted' was created", "sha256"),
         prepare=weights_changed_after_creation, check=no_trial_ran),
    Case("debug-shows-the-traceback", ["--debug", *SHOW, "sqlite:///{dir}/notes.db"],
         ("MpsearchError", "notes.db", "is not an SQLite database"), prepare=write("notes.db", "x\n"),
         how=in_a_process, traceback=True),
    Case("ctrl-c-during-a-run", CREATE, ("interrupted", "completed trials are kept",
                                                 "continue the study with: mpsearch study run held",
                                                 "--executor local"),
         exit=130, how=interrupted, check=resumed,
         prepare=both(write("hold", ""), spec(
             ('name = "toy"', ('name = "flaky"\nspace.hold = "{dir}/hold"\n'
                               'enqueue = [{behaviour = "ok"}, {behaviour = "hold"}, {behaviour = "ok"}]')),
             name="held", plugin=FLAKY, n_trials=3))),
    # -- streaming data, devices ---------------------------------------------------------
    Case("spec-streaming-not-true-false-auto", CREATE, ("bad.toml", "[data] streaming must be true, "
                                                        "false or \"auto\"", "'yes'"),
         prepare=spec(("train_subset = 1000", 'train_subset = 1000\nstreaming = "yes"'))),
    Case("data-streaming-what-is-not-files", CREATE, ("bad.toml", "[data] streaming = true",
                                                      "'mnist-mini'", "not one image per file"),
         prepare=spec(("train_subset = 1000", "train_subset = 1000\nstreaming = true"))),
    Case("data-resized-crops-in-memory", CREATE, ("bad.toml", "augment = 'resized-crop-flip'",
                                                  "only the streaming path reads",
                                                  "[data] streaming = true"),
         prepare=spec(("train_subset = 1000", 'train_subset = 1000\nstreaming = false\n'
                                              'augment = "resized-crop-flip"'))),
    Case("spec-gpus-per-trial-not-a-share", CREATE, ("bad.toml", "[resources] gpus_per_trial",
                                                     "a fraction of one GPU", "1.5"),
         prepare=spec(("max_concurrent = 1", "max_concurrent = 1\ngpus_per_trial = 1.5"))),
    Case("device-cuda-without-cuda", CREATE, ("bad.toml", "[training] device = \"cuda\"",
                                              "no CUDA device", "\"auto\""),
         prepare=spec(("batch_size = 100", 'batch_size = 100\ndevice = "cuda"')),
         marks=(pytest.mark.skipif(__import__("torch").cuda.is_available(),
                                   reason="this machine has a CUDA device"),)),
]


# -- the database every case must leave alone -------------------------------------------

BASE_ROWS = {  # every row that belongs to the base study
    "studies": "SELECT * FROM studies WHERE study_id = :id",
    "study_directions": "SELECT * FROM study_directions WHERE study_id = :id",
    "study_user_attributes": "SELECT * FROM study_user_attributes WHERE study_id = :id",
    "trials": "SELECT * FROM trials WHERE study_id = :id",
    **{table: f"SELECT x.* FROM {table} x JOIN trials t USING (trial_id) WHERE t.study_id = :id"
       for table in ("trial_values", "trial_params", "trial_user_attributes",
                     "trial_system_attributes", "trial_intermediate_values")},
}


def snapshot(db: Path) -> tuple[str, list[str], dict[str, list[tuple]]]:
    """Integrity, study names and the base study's rows, read without writing."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        names = sorted(r[0] for r in con.execute("SELECT study_name FROM studies"))
        (study_id,) = con.execute("SELECT study_id FROM studies WHERE study_name = ?",
                                  (BASE,)).fetchone()
        rows = {table: sorted(con.execute(query, {"id": study_id}).fetchall(), key=repr)
                for table, query in BASE_ROWS.items()}
    finally:
        con.close()
    return integrity, names, rows


@pytest.fixture(scope="module")
def base_db(tmp_path_factory) -> Path:
    """A study database with three COMPLETE trials of the toy strategy on MNIST-mini."""
    folder = tmp_path_factory.mktemp("base")
    url = f"sqlite:///{folder / 'mpsearch.db'}"
    host = PluginHost([str(TOY)], entry_points=False)
    create_study(load_spec(toy_spec(folder, name=BASE, n_trials=3), host), url, host)
    run_study(BASE, url, host, progress=False)
    assert [s for _, s in trial_states(folder / "mpsearch.db", BASE)] == ["COMPLETE"] * 3
    return folder / "mpsearch.db"


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch):
    """Installed third-party mpsearch plugins stay out; other packages' entry points stay in
    (test_cli's fixture hides them all, which trials cannot run without)."""
    import importlib.metadata

    every = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [] if kw.get("group") == "mpsearch" else every(**kw))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, base_db: Path, tmp_path: Path):
    db = tmp_path / "mpsearch.db"
    shutil.copyfile(base_db, db)
    url = f"sqlite:///{db}"
    before = snapshot(db)
    assert before[0] == "ok"
    if case.prepare is not None:
        case.prepare(tmp_path)

    result = case.how([fill(a, tmp_path) for a in case.args], tmp_path)

    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == case.exit, shown
    if case.traceback:
        assert result.stderr.startswith("Traceback"), shown
        last = result.stderr.strip().splitlines()[-1]
        assert all(m in last for m in case.message), shown
    else:
        assert "Traceback" not in result.stdout + result.stderr, shown
        lines = result.stderr.strip().splitlines()
        if case.exit == 0:
            assert lines == [], shown
        else:
            assert len(lines) == 1, shown
            assert lines[0].startswith("Error: ") == (case.exit == 1), shown
            assert all(m in lines[0] for m in case.message), shown
    if case.check is not None:
        case.check(tmp_path, url, result)

    integrity, names, rows = snapshot(db)
    assert integrity == "ok"
    assert rows == before[2]  # the existing study's trials, values and attributes, unchanged
    if case.exit == 1:
        assert names == before[1]  # a command that fails creates no study


def test_the_dataset_check_passes_real_data(shared_datasets, host):
    """The check that refuses the bad layouts above accepts the real MNIST and CIFAR-10."""
    for name in ("mnist", "cifar10"):
        host.datasets.get(name).check(shared_datasets)
