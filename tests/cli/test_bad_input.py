"""Bad input, as one table: each case is a command a user might type with something wrong.

Every case runs against a copy of a study database that already holds three
COMPLETE trials, and must:

- fail with the exit status it states (1 for an error, 130 for Ctrl-C), or succeed
  where only a trial fails (the trial then FAILs with its reason recorded);
- say what is wrong in exactly one line on stderr, naming the file, key, plugin or
  name (and, for an unknown name, the close match); no traceback unless ``--debug``;
- leave the database intact: ``PRAGMA integrity_check`` is ok, the existing study's
  trials are identical row for row, and a command that fails adds no study;
- leave the existing study's artefacts (its trials' files) byte for byte as they were;
- never show a storage password (:data:`SECRET`), whatever it prints.

To add a case, append a :class:`Case` to :data:`CASES`: the arguments (``{dir}`` is
the case's own folder, ``{url}`` the copied database), the words the error line must
hold, and, where needed, ``prepare`` (files to write first), ``check`` (assertions
afterwards) and ``how`` (:func:`in_process`, :func:`in_a_process` or a runner of its own).
What ``prepare`` writes is part of the starting state the command must leave alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import TOY, run, toy_spec

from mpsearch.host import PluginHost
from mpsearch.spec import load_spec
from mpsearch.storage import STUDY_ID_ATTR, study_dir
from mpsearch.study import create_study, run_study

BAD_PLUGINS = Path(__file__).resolve().parents[1] / "bad_plugins"
FLAKY = BAD_PLUGINS / "flaky.py"
BASE = "base"  # the study every case must leave as it was
ENV = {**os.environ, "MPSEARCH_COMPILE": "off"}
SECRET = "pw-sentinel-7f3a"  # a storage password no case may print


class Outcome(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


# -- how a case runs --------------------------------------------------------------------

def in_process(args: list[str], folder: Path) -> Outcome:
    """Through click's test runner (fast); an exception that escapes the CLI fails the test."""
    result = run(*args)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def in_a_process(args: list[str], folder: Path, preexec: Callable[[], None] | None = None) -> Outcome:
    """As a user runs it: ``python -m mpsearch.cli`` in its own process."""
    done = subprocess.run([sys.executable, "-m", "mpsearch.cli", *args], cwd=folder, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False,
                          preexec_fn=preexec)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _without_root_file_access() -> None:
    """In the child: file permissions bind even for root (drop CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the bounding set before exec; a no-op for other users)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def as_a_user(args: list[str], folder: Path) -> Outcome:
    """In its own process, where read-only files and folders are read-only (also for root)."""
    return in_a_process(args, folder, _without_root_file_access)


def _small_files() -> None:
    """In the child: no file may grow past 4 KiB, as on a full disk (writes fail, no signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def on_a_full_disk(args: list[str], folder: Path) -> Outcome:
    """In its own process, where every write past the first 4 KiB of a file fails."""
    return in_a_process(args, folder, _small_files)


def trial_states(db: Path, study: str) -> list[tuple[int, str]]:
    """``(number, state)`` of a study's trials, read without writing (the driver may be writing)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT t.number, t.state FROM trials t JOIN studies s USING (study_id) "
                           "WHERE s.study_name = ? ORDER BY t.number", (study,)).fetchall()
    finally:
        con.close()


def interrupted(args: list[str], folder: Path, signum: int = signal.SIGINT) -> Outcome:
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
                proc.send_signal(signum)
                break
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        (folder / "hold").unlink(missing_ok=True)
    return Outcome(proc.returncode, stdout, stderr)


def terminated(args: list[str], folder: Path) -> Outcome:
    """As :func:`interrupted`, with SIGTERM (what a scheduler or ``kill`` sends)."""
    return interrupted(args, folder, signal.SIGTERM)


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
    study = optuna.load_study(study_name="ck", storage=url)
    study.ask()
    last = artefacts(url, study) / "trial-00000" / "checkpoint" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 half a zip file")


def artefacts(url: str, study) -> Path:
    """The study's artefact folder (named by its name and id)."""
    return study_dir(url, study.study_name, study.user_attrs[STUDY_ID_ATTR])


def restarted_from_scratch(folder: Path, url: str, outcome: Outcome) -> None:
    import optuna

    orphan, retry = trials(url, "ck")
    assert orphan.state.name == "FAIL" and retry.user_attrs["retry_of"] == 0
    assert retry.state.name == "COMPLETE"
    warning = retry.user_attrs["checkpoint_warning"]
    assert "trial-00000/checkpoint/last.pt" in warning and "unreadable or corrupt" in warning
    assert "\n" not in warning and "restarted from scratch" in warning
    study = optuna.load_study(study_name="ck", storage=url)
    assert not (artefacts(url, study) / "trial-00000" / "checkpoint").exists()


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


# -- plugin files a stored spec names -----------------------------------------------------

PLANTED = ('"""Named in a study database (tests only): leaves a mark when imported."""\n'
           "from pathlib import Path\n\nPath(__file__).with_suffix('.ran').touch()\n")


MORE = "more"  # a second study of the toy strategy, no trial run yet: the one cases run


def more_study(folder: Path) -> None:
    url = fill("{url}", folder)
    host = PluginHost([str(TOY)], entry_points=False)
    create_study(load_spec(toy_spec(folder, name=MORE, n_trials=1), host), url, host)


def planted(pin: str, study: str = MORE) -> Callable:
    """``{dir}/planted.py``, a plugin that marks its import, added to ``study``'s stored plugins
    (the study "more" is created first): ``pin`` is "sha256" (its digest), "changed" (the
    digest of other content) or "none"."""

    def prepare(folder: Path) -> None:
        import optuna

        from mpsearch.storage import SPEC_ATTR

        more_study(folder)
        path = folder / "planted.py"
        path.write_text(PLANTED)
        digest = hashlib.sha256((PLANTED if pin == "sha256" else PLANTED + "#").encode()).hexdigest()
        entry = str(path) if pin == "none" else f"{path}#sha256={digest}"
        found = optuna.load_study(study_name=study, storage=fill("{url}", folder))
        raw = dict(found.user_attrs[SPEC_ATTR])
        found.set_user_attr(SPEC_ATTR, {**raw, "plugins": [*raw["plugins"], entry]})

    return prepare


def other_study(*behaviours: str, remove: str | None = None) -> Callable:
    """Study ``bad`` in ``{dir}/other.db`` whose trials run the flaky strategy's ``behaviours``;
    ``remove`` deletes that file from trial 0's artefacts."""

    def prepare(folder: Path) -> None:
        flaky(*behaviours)(folder)
        result = run("study", "create", str(folder / "bad.toml"), "--storage",
                     f"sqlite:///{folder / 'other.db'}", "--executor", "local", "--quiet")
        assert result.exit_code == 0, result.output
        if remove is not None:
            import optuna

            url = f"sqlite:///{folder / 'other.db'}"
            found = optuna.load_study(study_name="bad", storage=url)
            (artefacts(url, found) / "trial-00000" / remove).unlink()

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
    assert not list((folder / "mpsearch-studies").glob("weighted*/float-start.pt"))


def no_file(name: str, content: str | None = None) -> Callable:
    """Afterwards ``{dir}/name`` is absent, or still holds ``content``."""

    def check(folder: Path, url: str, outcome: Outcome) -> None:
        path = folder / name
        if content is None:
            assert not path.exists() and not list(folder.glob(f".{name}.*"))
        else:
            assert path.read_text() == content

    return check


def not_imported(folder: Path, url: str, outcome: Outcome) -> None:
    assert not (folder / "planted.ran").exists(), "the study's plugin file was imported"


def imported_and_ran(folder: Path, url: str, outcome: Outcome) -> None:
    assert (folder / "planted.ran").exists(), "the trusted plugin file was not imported"
    assert [t.state.name for t in trials(url, MORE)] == ["COMPLETE"]


def ran_more(folder: Path, url: str, outcome: Outcome) -> None:
    """Study "more" ran its trial, with the toy strategy given by --plugin."""
    not_imported(folder, url, outcome)
    found = trials(url, MORE)
    assert [t.state.name for t in found] == ["COMPLETE"] and found[0].user_attrs["strategy"] == "toy"


# -- studies and folders that are not what they seem --------------------------------------

def base_study(folder: Path):
    import optuna

    return optuna.load_study(study_name=BASE, storage=fill("{url}", folder))


def study_named(folder: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=fill("{url}", folder))


def foreign_folder(folder: Path) -> None:
    """Study "more"'s artefact folder, marked as another study's."""
    from mpsearch.storage import FOLDER_MARK

    more_study(folder)
    own = artefacts(fill("{url}", folder), study_named(folder, MORE))
    own.mkdir(parents=True)
    (own / FOLDER_MARK).write_text(json.dumps({"study": BASE, "study_id": str(uuid.uuid4())}))


def escaping_study(folder: Path) -> None:
    """A study named ``../../escaped``, made with Optuna's API, with the base study's spec."""
    import optuna

    from mpsearch.storage import STUDY_ID_ATTR

    base = base_study(folder)
    study = optuna.create_study(study_name="../../escaped", storage=fill("{url}", folder),
                                directions=["maximize", "minimize"])
    for key, value in base.user_attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(STUDY_ID_ATTR, str(uuid.uuid4()))


def nothing_escaped(folder: Path, url: str, outcome: Outcome) -> None:
    for up in (folder, folder.parent, folder.parent.parent):
        assert not list(up.glob("escaped*")), list(up.glob("escaped*"))


def same_name_elsewhere(folder: Path, url: str, outcome: Outcome) -> None:
    """A study named like the base one, in another database beside it, has a folder of its own."""
    import optuna

    other = optuna.load_study(study_name=BASE, storage=fill("sqlite:///{dir}/other.db", folder))
    mine = artefacts(fill("sqlite:///{dir}/other.db", folder), other)
    base = artefacts(url, base_study(folder))
    assert mine != base and mine.parent == base.parent and not base.exists()
    assert [Path(t.user_attrs["artefacts"]).parent for t in other.trials] == [mine]


def orphaned_twice(folder: Path) -> None:
    """Study ``loop``: a point whose driver died twice, and its third run RUNNING, stale."""
    import optuna

    from mpsearch.execution.driver import orphan

    url = fill("{url}", folder)
    host = PluginHost([str(TOY)], entry_points=False)
    create_study(load_spec(toy_spec(folder, name="loop", n_trials=1), host), url, host)
    study = optuna.load_study(study_name="loop", storage=url)
    for _ in range(2):
        trial = study.ask({"toy.bits": optuna.distributions.CategoricalDistribution([2, 4, 8])})
        orphan(study, trial._trial_id, "its driver died (simulated)")
    study.ask()  # the second retry: left RUNNING with no heartbeat


def given_up(folder: Path, url: str, outcome: Outcome) -> None:
    found = trials(url, "loop")
    assert [t.state.name for t in found] == ["FAIL"] * 3  # nothing re-queued, nothing run
    last = found[2].user_attrs
    assert last["gave_up"] is True and last["retry_of"] == 1
    assert "not re-queued: its point ran 3 time(s)" in last["fail_reason"]
    assert "max_retries = 2" in last["fail_reason"]


# -- plugins that misbehave --------------------------------------------------------------

HOOK_PLUGIN = """\
\"\"\"A plugin whose {hook} hook raises (tests only).\"\"\"
from mpsearch import hookimpl


@hookimpl
def {hook}({args}):
    raise RuntimeError("the {hook} hook broke")
"""
HOOK_ARGS = {"on_trial_start": "study, trial, params", "on_epoch_end": "study, trial, epoch, metrics",
             "on_trial_end": "study, trial, state, values, attrs"}


def raising_hook(hook: str) -> Callable:
    return both(write("hooks.py", HOOK_PLUGIN.format(hook=hook, args=HOOK_ARGS[hook])),
                spec(n_trials=1))


def recorded_as_a_warning(hook: str) -> Callable:
    def check(folder: Path, url: str, outcome: Outcome) -> None:
        for t in trials(url, "bad"):
            assert t.state.name == "COMPLETE" and "fail_reason" not in t.user_attrs
            assert t.user_attrs["hook_warnings"][0] == (f"plugin '{folder / 'hooks.py'}' raised in "
                                                        f"{hook}: RuntimeError: the {hook} hook broke")

    return check


def complete(study: str, n: int) -> Callable:
    def check(folder: Path, url: str, outcome: Outcome) -> None:
        assert [t.state.name for t in trials(url, study)] == ["COMPLETE"] * n

    return check


# -- assignments ----------------------------------------------------------------------------

def widths(value: object) -> Callable:
    """LeNet-5's 8-bit assignment with conv1's weights per channel, the first one at ``value``."""

    def prepare(folder: Path) -> None:
        assignment()(folder)
        path = folder / "lenet5.json"
        data = json.loads(path.read_text())
        data["groups"]["conv1:weight"]["bits"] = {"shape": [20, 1, 1, 1], "values": [value] + [4] * 19}
        path.write_text(json.dumps(data))

    return prepare


class _Touch:
    """Unpickling this creates a file: a sidecar that runs code when loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def sidecar(kind: str) -> Callable:
    """The assignment's conv1 weights per channel in a ``.npz`` sidecar that is ``kind``:
    "truncated", "pickled" (an object array whose unpickling creates ``{dir}/pickle.ran``),
    or named by a non-string ("number") or a path elsewhere ("outside")."""

    def prepare(folder: Path) -> None:
        import numpy as np

        assignment()(folder)
        path = folder / "lenet5.json"
        data = json.loads(path.read_text())
        data["groups"]["conv1:weight"]["bits"] = {"shape": [20, 1, 1, 1], "sidecar": "a0"}
        data["sidecar"] = {"number": 5, "outside": "../lenet5.npz"}.get(kind, "lenet5.npz")
        path.write_text(json.dumps(data))
        npz = folder / "lenet5.npz"
        if kind == "pickled":
            np.savez(npz, a0=np.array([_Touch(folder / "pickle.ran")], dtype=object))
        else:
            np.savez_compressed(npz, a0=np.full((20, 1, 1, 1), 4, dtype=np.uint8))
        if kind == "truncated":
            npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])

    return prepare


def no_pickle_ran(folder: Path, url: str, outcome: Outcome) -> None:
    assert not (folder / "pickle.ran").exists()


# -- files that must not be overwritten ---------------------------------------------------

def unchanged(name: str, content: str) -> Callable:
    def check(folder: Path, url: str, outcome: Outcome) -> None:
        assert (folder / name).read_text() == content

    return check


def absent(name: str) -> Callable:
    def check(folder: Path, url: str, outcome: Outcome) -> None:
        assert not (folder / name).exists()

    return check


# -- files and folders that cannot be written ----------------------------------------------

def read_only(*names: str) -> Callable:
    """Make ``{dir}/name`` read-only (a folder named with a trailing / is created first)."""

    def prepare(folder: Path) -> None:
        for name in names:
            path = folder / name.rstrip("/")
            if name.endswith("/"):
                path.mkdir(exist_ok=True)
            os.chmod(path, 0o555 if path.is_dir() else 0o444)

    return prepare


def artefacts_on_a_full_disk(folder: Path) -> None:
    """The weights of study "more"'s trial go to /dev/full."""
    more_study(folder)
    target = artefacts(fill("{url}", folder), study_named(folder, MORE)) / "trial-00000" / "model.pt"
    target.parent.mkdir(parents=True)
    target.symlink_to("/dev/full")


def failed_for_the_disk(folder: Path, url: str, outcome: Outcome) -> None:
    (last,) = trials(url, MORE)
    assert last.state.name == "FAIL"
    assert last.user_attrs["fail_reason"].startswith("cannot use '")
    assert "model.pt': No space left on device" in last.user_attrs["fail_reason"]


# A plugin file that is not Python; written at test time, so that linters never read it.
SYNTAX_ERROR = '"""A plugin with a syntax error."""\n\ndef register_strategies(register:\n    pass\n'
CREATE = ["study", "create", "{dir}/bad.toml", "--storage", "{url}", "--executor", "local", "--quiet"]
SHOW = ["study", "show", BASE, "--storage"]
EXPORT = ["export", BASE, "--storage", "{url}"]
OTHER = ["export", "bad", "--storage", "sqlite:///{dir}/other.db"]
RUN_MORE = ["study", "run", "more", "--storage", "{url}", "--executor", "local", "--quiet"]
WITH_TOY = ["--plugin", str(TOY)]  # the base study's strategy, given on the command line
UNREACHABLE = f"postgresql+psycopg://mpsearch:{SECRET}@127.0.0.1:1/studies"

CASES = [
    # -- the spec ----------------------------------------------------------------------
    Case("spec-malformed-toml", CREATE, ("bad.toml", "not valid TOML", "line 13"),
         prepare=spec(("[training]", "[training"))),
    Case("spec-unknown-key", CREATE, ("bad.toml", "unknown key(s) batch_szie in [training]",
                                      "Did you mean 'batch_size'?", "valid keys: autocast, batch_size"),
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
    Case("spec-rl-exploration-grows", CREATE, ("bad.toml", "strategy[0]", "noise_final can exceed noise"),
         prepare=spec(('name = "toy"', 'name = "rl"\nspace.noise_final = 0.9'))),
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
    Case("trial-diverged-to-chance", CREATE, exit=0,
         prepare=spec(('name = "toy"', ('name = "toy"\nspace.behaviour = ["ok", "chance"]\n'
                                         'enqueue = [{behaviour = "chance"}, {behaviour = "ok"}]')),
                      n_trials=2),
         check=failed_then_complete("diverged: validation accuracy", "chance level at the end",
                                    "lower the learning rates")),
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
                                            "--executor", "local", "--quiet", "--trust-spec-plugins"],
         ("w.pt", "has changed since study 'weighted' was created", "sha256"),
         prepare=weights_changed_after_creation, check=no_trial_ran),
    # -- export --------------------------------------------------------------------------
    Case("export-unknown-trial", [*EXPORT, "--trial", "7", "-o", "{dir}/m.onnx"],
         ("study 'base' has no trial 7", "trials: 0-2"), check=no_file("m.onnx")),
    Case("export-failed-trial", [*OTHER, "--trial", "0", "-o", "{dir}/m.onnx"],
         ("trial 0 of study 'bad' is FAIL", "the flaky strategy broke", "only a COMPLETE trial"),
         prepare=other_study("raise"), check=no_file("m.onnx")),
    Case("export-artefacts-missing", [*OTHER, "--trial", "0", "-o", "{dir}/m.mpq"],
         ("trial 0 of study 'bad'", "trial-00000/model.mpq", "is missing"),
         prepare=other_study("ok", remove="model.mpq"), check=no_file("m.mpq")),
    Case("export-output-exists", [*EXPORT, "--trial", "0", "-o", "{dir}/m.onnx"],
         ("m.onnx", "exists; add --force to replace it"), prepare=write("m.onnx", "keep me"),
         check=no_file("m.onnx", "keep me")),
    Case("export-unknown-suffix", [*EXPORT, "--trial", "0", "-o", "{dir}/m.pt"],
         ("m.pt", "unknown suffix '.pt'", "use .onnx", ".mpq"), check=no_file("m.pt")),
    Case("export-trial-not-a-number", [*EXPORT, "--trial", "last", "-o", "{dir}/m.onnx"],
         ("--trial 'last'", "a trial number or 'best'")),
    Case("export-where-malformed", [*EXPORT, "--trial", "best", "--where", "bitops<<1", "-o", "{dir}/m.onnx"],
         ("--where 'bitops<<1'", "NAME<=NUMBER")),
    Case("export-where-unknown-name", [*EXPORT, "--trial", "best", "--where", "bitop<=1", "-o", "{dir}/m.onnx"],
         ("--where name", "'bitop'", "Did you mean 'bitops'")),
    Case("export-nothing-meets-the-condition",
         [*EXPORT, "--trial", "best", "--where", "bitops<=0", "-o", "{dir}/m.onnx"],
         ("no trial on the Pareto front of study 'base' has bitops<=0", "span bitops"), check=no_file("m.onnx")),
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
    Case("sigterm-during-a-run", CREATE, ("terminated", "completed trials are kept",
                                          "continue the study with: mpsearch study run held"),
         exit=143, how=terminated, check=resumed,
         prepare=both(write("hold", ""), spec(
             ('name = "toy"', ('name = "flaky"\nspace.hold = "{dir}/hold"\n'
                               'enqueue = [{behaviour = "ok"}, {behaviour = "hold"}, {behaviour = "ok"}]')),
             name="held", plugin=FLAKY, n_trials=3)),
         marks=(pytest.mark.slow,)),
    Case("usage-unknown-option", ["study", "run", BASE, "--storage", "{url}", "--n-trails", "2"],
         ("No such option '--n-trails'", "Did you mean '--n-trials'?", "study run --help")),
    Case("usage-missing-argument", ["study", "create"], ("Missing argument 'SPEC'", "study create --help")),
    Case("usage-bad-value", ["study", "run", BASE, "--storage", "{url}", "--n-trials", "0"],
         ("Invalid value for '--n-trials'", "0 is not in the range x>=1")),
    Case("usage-unknown-command", ["stduy", "list"], ("No such command 'stduy'", "--help")),
    Case("usage-unknown-group-option", ["--plugn", "x.py", "plugins", "list"], ("No such option '--plugn'",
                                                                            "Did you mean '--plugin'?")),
    # -- reading a study never runs the code it names; running it, only with consent -------
    Case("read-show-imports-no-spec-plugin", [*SHOW, "{url}"], exit=0, prepare=planted("sha256", BASE),
         check=not_imported),
    Case("read-list-imports-no-spec-plugin", ["study", "list", "--storage", "{url}"], exit=0,
         prepare=planted("sha256", BASE), check=not_imported),
    Case("read-export-imports-no-spec-plugin", ["study", "export", BASE, "--storage", "{url}",
                                                "-o", "{dir}/trials.json"],
         exit=0, prepare=planted("sha256", BASE), check=not_imported),
    Case("read-plot-imports-no-spec-plugin", ["study", "plot", BASE, "--storage", "{url}", "-o", "{dir}"],
         exit=0, prepare=planted("sha256", BASE), check=not_imported),
    Case("run-imports-no-spec-plugin-without-consent", RUN_MORE,
         ("unknown strategy 'toy'", "planted.py", "--trust-spec-plugins", "--plugin"),
         prepare=planted("sha256"), check=not_imported),
    Case("run-loads-command-line-plugins-only", [*WITH_TOY, *RUN_MORE], exit=0,
         prepare=planted("sha256"), check=ran_more),
    Case("run-with-consent-refuses-a-changed-file", [*RUN_MORE, "--trust-spec-plugins"],
         ("planted.py", "changed since the study recorded it", "not loaded"),
         prepare=planted("changed"), check=not_imported),
    Case("run-with-consent-refuses-a-file-without-sha256", [*RUN_MORE, "--trust-spec-plugins"],
         ("planted.py", "without the sha256", "--plugin"), prepare=planted("none"), check=not_imported),
    Case("run-with-consent-loads-the-recorded-file", [*RUN_MORE, "--trust-spec-plugins"], exit=0,
         prepare=planted("sha256"), check=imported_and_ran),
    # -- plugins given on the command line reach the trials; their hooks never break one --
    Case("plugin-strategy-only-on-the-command-line", [*WITH_TOY, *CREATE], exit=0,
         prepare=spec((f'plugins = ["{TOY}"]', ""), n_trials=2), check=complete("bad", 2)),
    Case("hook-on-trial-start-raises", ["--plugin", "{dir}/hooks.py", *CREATE], exit=0,
         prepare=raising_hook("on_trial_start"), check=recorded_as_a_warning("on_trial_start")),
    Case("hook-on-epoch-end-raises", ["--plugin", "{dir}/hooks.py", *CREATE], exit=0,
         prepare=raising_hook("on_epoch_end"), check=recorded_as_a_warning("on_epoch_end")),
    Case("hook-on-trial-end-raises", ["--plugin", "{dir}/hooks.py", *CREATE], exit=0,
         prepare=raising_hook("on_trial_end"), check=recorded_as_a_warning("on_trial_end")),
    Case("plugin-objective-named-accuracy", ["--plugin", "{dir}/acc.py", "cost", "lenet5"],
         ("acc.py", "objective name 'accuracy'", "reserved for the validation accuracy"),
         prepare=write("acc.py", "from mpsearch import hookimpl\n"
                                 "from mpsearch.objectives import Objective\n\n\n"
                                 "class Accuracy(Objective):\n"
                                 "    def differentiable(self, profile, bits, scale_bits=None):\n"
                                 "        raise NotImplementedError\n\n\n"
                                 "@hookimpl\ndef register_objectives(register):\n"
                                 "    register('accuracy', Accuracy())\n")),
    Case("plugin-command-named-like-a-built-in", ["--plugin", "{dir}/clash.py", "cost", "lenet5"],
         ("clash.py", "registered command(s) cost that already exist"),
         prepare=write("clash.py", "from mpsearch import hookimpl\n\n\n@hookimpl\n"
                                   "def register_commands(cli):\n    @cli.command('cost')\n"
                                   "    def cost():\n        pass\n")),
    Case("plugin-calls-sys-exit", ["--plugin", "{dir}/exits.py", *SHOW, "{url}"],
         ("exits.py", "called sys.exit(0) while importing"),
         prepare=write("exits.py", "import sys\n\nsys.exit(0)\n")),
    # -- storage passwords, in-memory databases ------------------------------------------
    Case("storage-password-never-shown", ["study", "list", "--storage", UNREACHABLE],
         ("postgresql+psycopg://mpsearch:***@127.0.0.1:1/studies", "cannot be reached")),
    Case("spec-storage-password-never-shown", ["study", "create", "{dir}/bad.toml", "--quiet"],
         ("mpsearch:***@127.0.0.1:1/studies", "cannot be reached"),
         prepare=spec(("n_trials = 3", f'n_trials = 3\nstorage = "{UNREACHABLE}"'))),
    Case("storage-in-memory", [*CREATE[:3], "--storage", "sqlite://"],
         ("storage 'sqlite://'", "in-memory database", "sqlite:///mpsearch.db"), prepare=spec()),
    # -- artefacts belong to one study --------------------------------------------------
    Case("artefacts-same-name-in-another-database",
         [*CREATE[:2], "{dir}/base.toml", "--storage", "sqlite:///{dir}/other.db", *CREATE[5:]], exit=0,
         prepare=lambda folder: toy_spec(folder, name=BASE, n_trials=1), check=same_name_elsewhere),
    Case("artefacts-folder-of-another-study", [*WITH_TOY, *RUN_MORE],
         ("artefact folder", "belongs to another study", f"not to study '{MORE}'"),
         prepare=foreign_folder),
    Case("study-name-from-a-database-leads-outside",
         [*WITH_TOY, "study", "run", "../../escaped", "--storage", "{url}", "--quiet"],
         ("study name '../../escaped' may use only letters, digits",), prepare=escaping_study,
         check=nothing_escaped),
    Case("study-name-from-a-database-names-the-export",
         ["study", "export", "../../escaped", "--storage", "{url}"],
         ("study name '../../escaped' may use only letters, digits",), prepare=escaping_study,
         check=nothing_escaped, how=in_a_process,
         marks=(pytest.mark.slow,)),
    # -- names and numbers in a spec --------------------------------------------------------
    Case("spec-name-trailing-newline", CREATE, ("bad.toml", "[study] name", "'bad\\n'", "may use only"),
         prepare=spec(('name = "bad"', 'name = "bad\\n"'))),
    Case("spec-name-too-long", CREATE, ("bad.toml", "[study] name is 300 characters long", "at most 100"),
         prepare=spec(('name = "bad"', f'name = "{"x" * 300}"'))),
    Case("spec-seed-too-large", CREATE, ("bad.toml", "[study] seed", "from 0 to 4294967295",
                                         "4294967296"),
         prepare=spec(("seed = 3", "seed = 4294967296"))),
    # -- assignments: widths are whole numbers, sidecars are arrays beside the file --------
    Case("assignment-width-fraction", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "conv1:weight", "width 4.7", "whole numbers from 0 to 32"), prepare=widths(4.7)),
    Case("assignment-width-negative-fraction", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "conv1:weight", "width -0.5"), prepare=widths(-0.5)),
    Case("assignment-width-above-32-fraction", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "conv1:weight", "width 32.9"), prepare=widths(32.9)),
    Case("assignment-width-nan", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", "conv1:weight", "width nan"), prepare=widths(float("nan"))),
    Case("assignment-sidecar-truncated", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.npz", "is not readable"), prepare=sidecar("truncated")),
    Case("assignment-sidecar-name-not-a-string", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", '"sidecar" must be the name of a .npz file beside it', "not 5"),
         prepare=sidecar("number")),
    Case("assignment-sidecar-outside", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.json", '"sidecar" must be the name', "'../lenet5.npz'"), prepare=sidecar("outside")),
    Case("assignment-sidecar-pickled", ["cost", "lenet5", "--assignment", "{dir}/lenet5.json"],
         ("lenet5.npz", "allow_pickle=False"), prepare=sidecar("pickled"), check=no_pickle_ran),
    Case("assignment-save-into-a-missing-folder",
         ["cost", "lenet5", "--save-assignment", "{dir}/nowhere/a.json"],
         ("cannot write the assignment", "nowhere/a.json", "does not exist")),
    # -- files a command writes are never overwritten silently -----------------------------
    Case("export-over-an-existing-file", ["study", "export", BASE, "--storage", "{url}",
                                          "-o", "{dir}/mine.csv"],
         ("mine.csv", "exists", "--force"), prepare=write("mine.csv", "my notes\n"),
         check=unchanged("mine.csv", "my notes\n")),
    Case("export-unknown-suffix", ["study", "export", BASE, "--storage", "{url}", "-o", "{dir}/t.xlsx"],
         ("t.xlsx", "'.xlsx'", ".csv, .json or .parquet", "--format"), check=absent("t.xlsx")),
    Case("plot-over-an-existing-file", ["study", "plot", BASE, "--storage", "{url}", "-o", "{dir}"],
         (f"{BASE}-front.png", "exists", "--force"), prepare=write(f"{BASE}-front.png", "my picture"),
         check=unchanged(f"{BASE}-front.png", "my picture")),
    # -- databases and folders that cannot be written ------------------------------------
    Case("storage-read-only-database", [*WITH_TOY, *RUN_MORE],
         ("the study storage failed", "attempt to write a readonly database"),
         prepare=both(more_study, read_only("mpsearch.db")), how=as_a_user,
         marks=(pytest.mark.slow,)),
    Case("storage-read-only-database-can-be-read", [*SHOW, "{url}"], exit=0,
         prepare=read_only("mpsearch.db"), how=as_a_user,
         marks=(pytest.mark.slow,)),
    Case("storage-read-only-folder", [*WITH_TOY, *RUN_MORE], ("Permission denied",),
         prepare=both(more_study, read_only("")), how=as_a_user,
         marks=(pytest.mark.slow,)),
    Case("storage-read-only-artefacts-folder", [*WITH_TOY, *RUN_MORE],
         ("cannot use the artefact folder", "mpsearch-studies", "Permission denied"),
         prepare=both(more_study, read_only("mpsearch-studies/")), how=as_a_user,
         marks=(pytest.mark.slow,)),
    Case("storage-read-only-lock-file", [*WITH_TOY, *RUN_MORE], exit=0,
         prepare=both(more_study, write("mpsearch.db.lock", ""), read_only("mpsearch.db.lock")),
         how=as_a_user, check=ran_more,
         marks=(pytest.mark.slow,)),
    Case("storage-full-disk-under-the-database", [*WITH_TOY, *RUN_MORE],
         ("the study storage failed", "disk I/O error"), prepare=more_study, how=on_a_full_disk,
         marks=(pytest.mark.slow,)),
    Case("storage-full-disk-under-the-artefacts", [*WITH_TOY, *RUN_MORE], exit=0,
         prepare=artefacts_on_a_full_disk, check=failed_for_the_disk),
    # -- a point whose driver keeps dying is not re-run forever ---------------------------
    Case("orphan-given-up-after-max-retries",
         [*WITH_TOY, "study", "run", "loop", "--storage", "{url}", "--quiet", "--heartbeat", "0.05",
          "--grace", "0.1"], exit=0, prepare=orphaned_twice, check=given_up),
    # -- hawq and mpsearch sensitivity ----------------------------------------------------
    Case("sensitivity-unknown-model", ["sensitivity", "lenet6", "--data", "mnist-mini"],
         ("unknown model 'lenet6'", "Did you mean 'lenet5'")),
    Case("sensitivity-data-missing", ["sensitivity", "lenet5", "--data", "mnist", "--root", "{dir}/nowhere"],
         ("dataset 'mnist'", "nowhere", "is not a folder", "--root")),
    Case("sensitivity-weights-wrong-shape", ["sensitivity", "lenet5", "--data", "mnist-mini",
                                             "--weights", "{dir}/w.pt"],
         ("w.pt", "does not fit the model", "wrong shape(s) fc2.weight [5, 500]"),
         prepare=weights("wrong-shape")),
    Case("sensitivity-weights-not-a-state-dict", ["sensitivity", "lenet5", "--data", "mnist-mini",
                                                  "--weights", "{dir}/w.pt"],
         ("w.pt", "is not a state dict"), prepare=weights("not-a-state-dict")),
    Case("spec-hawq-budgets-malformed", CREATE, ("bad.toml", "strategy[0].space.budgets", "'size:0.5'",
                                                 "OBJECTIVE=BUDGET"),
         prepare=spec(('name = "toy"', 'name = "hawq"\nspace.budgets = "size:0.5"'))),
    Case("trial-hawq-budget-infeasible", CREATE, exit=0,
         prepare=spec(('name = "toy"', ('name = "hawq"\nspace.budget = [0.01, 0.5]\n'
                                         'space.hessian_images = 32\nspace.max_iterations = 1\n'
                                         'enqueue = [{budget = 0.01}, {budget = 0.5}]')), n_trials=2),
         check=failed_then_complete("strategy 'hawq'", "bitops <=", "cannot be met", "raise the budget")),
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


def snapshot(db: Path) -> tuple[str, list[str], dict[str, list[tuple]], dict[str, str]]:
    """Integrity, study names, the base study's rows and the sha256 of each of its trials'
    files, read without writing."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        names = sorted(r[0] for r in con.execute("SELECT study_name FROM studies"))
        (study_id,) = con.execute("SELECT study_id FROM studies WHERE study_name = ?",
                                  (BASE,)).fetchone()
        rows = {table: sorted(con.execute(query, {"id": study_id}).fetchall(), key=repr)
                for table, query in BASE_ROWS.items()}
        folders = [json.loads(r[0]) for r in con.execute(
            "SELECT a.value_json FROM trial_user_attributes a JOIN trials t USING (trial_id) "
            "WHERE t.study_id = ? AND a.key = 'artefacts'", (study_id,))]
    finally:
        con.close()
    files = {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
             for folder in folders for f in sorted(Path(folder).iterdir())}
    return integrity, names, rows, files


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
    if case.prepare is not None:
        case.prepare(tmp_path)
    before = snapshot(db)
    assert before[0] == "ok" and len(before[3]) == 3 * 4  # three trials: assignment, params, model.pt, model.mpq

    result = case.how([fill(a, tmp_path) for a in case.args], tmp_path)

    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == case.exit, shown
    assert SECRET not in result.stdout + result.stderr, shown
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

    integrity, names, rows, files = snapshot(db)
    assert integrity == "ok"
    assert rows == before[2]  # the existing study's trials, values and attributes, unchanged
    assert files == before[3]  # and their files
    if case.exit == 1:
        assert names == before[1]  # a command that fails creates no study


def test_the_dataset_check_passes_real_data(shared_datasets, host):
    """The check that refuses the bad layouts above accepts the real MNIST and CIFAR-10."""
    for name in ("mnist", "cifar10"):
        host.datasets.get(name).check(shared_datasets)
