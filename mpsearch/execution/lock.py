"""The study's lock: what drivers hold while they claim, tell or fail a study's trials.

One lock per study, taken in the database itself where it can be (see
:func:`study_lock`), so drivers on several machines that share a PostgreSQL
study serialise their claims (see :mod:`mpsearch.execution.driver`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.optuna_private import rdb_storage


@contextmanager
def study_lock(storage: Any, study_id: int) -> Iterator[None]:
    """Hold the lock that serialises the drivers of one study while one counts and claims trials.

    PostgreSQL: a session advisory lock (released by the server if the driver dies).
    MySQL: ``GET_LOCK``. SQLite: ``flock`` on ``FILE.lock`` beside the database file,
    one lock for all its studies (SQLite is only shared between processes of one
    machine). Other databases: no lock, so two drivers may together run a trial or
    two more than asked. Not re-entrant: never nest it.
    """
    engine = rdb_storage(storage).engine
    kind = engine.dialect.name
    if kind == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        import fcntl

        with _lock_file(Path(database)) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if kind not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    import sqlalchemy

    if kind == "postgresql":
        take = sqlalchemy.text("SELECT pg_advisory_lock(:space, :key)")
        give = sqlalchemy.text("SELECT pg_advisory_unlock(:space, :key)")
        args = {"space": _LOCK_SPACE, "key": int(study_id)}
    else:
        take = sqlalchemy.text("SELECT GET_LOCK(:name, -1)")
        give = sqlalchemy.text("SELECT RELEASE_LOCK(:name)")
        args = {"name": f"mpsearch-study-{int(study_id)}"}
    with engine.connect() as conn:
        conn.execute(take, args)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(give, args)
            conn.commit()


_LOCK_SPACE = 0x6D707363  # "mpsc": keeps mpsearch's advisory locks apart from other users'


def _lock_file(database: Path):
    """``FILE.lock`` beside the database's real file (a symlink shares its target's lock), open.

    ``flock`` needs no write access, so an existing lock file that is read-only is opened
    for reading.
    """
    path = Path(f"{database.resolve()}.lock")
    try:
        return open(path, "a+b")  # noqa: SIM115 - closed by the caller's with
    except PermissionError as exc:
        first = exc
    except OSError as exc:
        raise MpsearchError(f"cannot open the lock file {str(path)!r}: {exc.strerror or exc}.") from None
    try:
        return open(path, "rb")  # noqa: SIM115
    except OSError:
        raise MpsearchError(f"cannot create the lock file {str(path)!r} beside the database: "
                            f"{first.strerror or first}; make its folder writable.") from None
