"""Where studies live: Optuna storages from URLs, and each study's artefact folder.

The database is the truth about a study: its spec, every trial's parameters,
values and attributes. Artefacts too large for a database row (assignments,
quantized weights) go to ``mpsearch-studies/<study>/`` beside the SQLite file (or
in the working directory for a server database).

Any SQLAlchemy URL whose driver is installed works. PostgreSQL
(``postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DB``, driver from the
``postgres`` extra) is the one tested beside SQLite, and the one to use when
several drivers share a study from different machines (see :mod:`mpsearch.driver`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError

DEFAULT_STORAGE = "sqlite:///mpsearch.db"
STUDIES_DIR = "mpsearch-studies"
SPEC_ATTR = "mpsearch_spec"
OBJECTIVES_ATTR = "objectives"
UNITS_ATTR = "units"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other URLs (and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def open_storage(url: str | None, *, create: bool = False) -> Any:
    """An ``optuna.storages.RDBStorage`` for a SQLAlchemy URL.

    Args:
        create: allow creating a new SQLite file (only ``study create`` does).

    Raises:
        MpsearchError: the URL cannot be opened, or the file is not an Optuna database.
    """
    import optuna

    url = url or DEFAULT_STORAGE
    path = sqlite_path(url)
    if path is not None:
        if not path.exists() and not create:
            raise MpsearchError(f"storage {url!r}: the file {str(path)!r} does not exist; create a "
                                f"study there with 'mpsearch study create SPEC --storage {url}'.")
        if path.exists():
            _check_sqlite(path, url)
        elif not path.parent.exists():
            raise MpsearchError(f"storage {url!r}: the folder {str(path.parent)!r} does not exist.")
    shown = _check_driver(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors are many and deep
        # the driver's own message (without SQLAlchemy's wrapping), on one line
        cause = getattr(exc, "orig", None) or exc
        text = "; ".join(" ".join(line.split()) for line in str(cause).splitlines() if line.strip())
        reach = "cannot be reached" if _is_connection_error(exc) else "cannot be opened"
        raise MpsearchError(f"storage {shown!r} {reach}: {text or type(cause).__name__}") from None


def _check_driver(url: str) -> str:
    """The URL with its password hidden, once its database kind and driver are known to load.

    Raises:
        MpsearchError: not a database URL, an unknown database kind, or its driver is missing.
    """
    import sqlalchemy
    from sqlalchemy import exc as sa_exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise MpsearchError(f"storage {url!r} is not a database URL; give sqlite:///FILE or "
                            f"postgresql+psycopg://USER@HOST:PORT/DB.") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except sa_exc.NoSuchModuleError:
        raise MpsearchError(f"storage {shown!r}: SQLAlchemy knows no database "
                            f"{parsed.drivername!r}; give sqlite:///FILE or "
                            f"postgresql+psycopg://USER@HOST:PORT/DB.") from None
    load = getattr(dialect, "import_dbapi", None) or dialect.dbapi  # SQLAlchemy 2, 1.4
    try:
        load()
    except ImportError as exc:
        module = getattr(exc, "name", None) or parsed.get_driver_name()
        if parsed.get_backend_name() == "postgresql":
            hint = ("install the PostgreSQL driver with pip install 'mpsearch[postgres]' "
                    "and give postgresql+psycopg://USER@HOST:PORT/DB")
        else:
            hint = f"install the Python package that provides it for SQLAlchemy's {parsed.drivername}"
        raise MpsearchError(f"storage {shown!r}: the database driver {module!r} is not installed; "
                            f"{hint}.") from None
    return shown


def _is_connection_error(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, sa_exc.OperationalError) or bool(getattr(exc, "connection_invalidated", 0))


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # SQLite serialises writers; a generous timeout rides out the other drivers' writes
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # an unreachable host fails in seconds, not minutes
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def rdb(storage: Any) -> Any:
    """The ``RDBStorage`` itself, also behind the cache a ``Study`` wraps it in."""
    return getattr(storage, "_backend", storage)


@contextmanager
def study_lock(storage: Any, study_id: int) -> Iterator[None]:
    """Hold the lock that serialises the drivers of one study while one counts and claims trials.

    PostgreSQL: a session advisory lock (released by the server if the driver dies).
    MySQL: ``GET_LOCK``. SQLite: ``flock`` on ``FILE.lock`` beside the database file,
    one lock for all its studies (SQLite is only shared between processes of one
    machine). Other databases: no lock, so two drivers may together run a trial or
    two more than asked. Not re-entrant: never nest it.
    """
    engine = rdb(storage).engine
    kind = engine.dialect.name
    if kind == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        import fcntl

        with open(f"{database}.lock", "a+b") as f:
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


def _check_sqlite(path: Path, url: str) -> None:
    """Refuse a file that is not an SQLite database, without writing to it."""
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is not readable: {exc}.") from exc
    if header and header != b"SQLite format 3\x00":
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is not an SQLite database; "
                            f"give another file or a database URL.")
    if not header:
        return
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            # a damaged page would otherwise surface as a traceback deep in SQLAlchemy
            problems = [r[0] for r in con.execute("PRAGMA quick_check(1)")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is not a readable SQLite database: "
                            f"{exc}.") from exc
    if problems != ["ok"]:
        found = " ".join(problems[0].split()) if problems else "no answer"
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is a damaged SQLite database ({found}); "
                            f"restore it from a copy, or salvage it with 'sqlite3 {path} .recover'.")
    if tables and "studies" not in tables:
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is an SQLite database but not an "
                            f"Optuna one (no 'studies' table); give another file.")


def study_dir(url: str | None, name: str) -> Path:
    """The artefact folder of study ``name`` stored at ``url``."""
    path = sqlite_path(url or DEFAULT_STORAGE)
    base = path.resolve().parent if path is not None else Path.cwd()
    return base / STUDIES_DIR / name


def load_study(url: str | None, name: str) -> Any:
    """An existing study, or a one-line error listing the studies the storage holds."""
    import optuna

    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        from mpsearch.errors import UnknownNameError

        raise UnknownNameError("study", name, optuna.get_all_study_names(storage)) from None
