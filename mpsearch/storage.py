"""Where studies live: Optuna storages from URLs, and each study's artefact folder.

The database is the truth about a study: its spec, every trial's parameters,
values and attributes. Artefacts too large for a database row (assignments,
quantized weights) go to ``mpsearch-studies/<study>-<id>/`` beside the SQLite file
(or in the working directory for a server database), where ``<id>`` begins the
study's own UUID (the study attribute ``mpsearch_study_id``): two studies of one
name, in two databases or one after the other, never share a folder, and a folder
marked as another study's is refused.

A storage URL's password never leaves this process: messages show the URL with
``***`` (:func:`~mpsearch.storage_url.shown_url`), and nothing mpsearch stores or hands to Ray holds it.
Give it in the URL, or leave it out and let the PostgreSQL driver read
``PGPASSWORD`` or ``~/.pgpass``; the command line also reads the whole URL from
``MPSEARCH_STORAGE``.

Any SQLAlchemy URL whose driver is installed works. PostgreSQL
(``postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DB``, driver from the
``postgres`` extra) is the one tested beside SQLite, and the one to use when
several drivers share a study from different machines (see :mod:`mpsearch.execution.driver`).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.execution.lock import study_lock
from mpsearch.optuna_private import rdb_storage, study_id, study_storage
from mpsearch.storage_url import (  # noqa: F401 - re-exported: the CLI and tests import them here
    DEFAULT_STORAGE,
    password_of,
    shown_url,
    url_without_password,
)

STORAGE_ENV = "MPSEARCH_STORAGE"  # the command line's --storage, for a URL kept off command lines
STUDIES_DIR = "mpsearch-studies"
SPEC_ATTR = "mpsearch_spec"
OBJECTIVES_ATTR = "objectives"
UNITS_ATTR = "units"
STUDY_ID_ATTR = "mpsearch_study_id"  # the study's UUID, which names its artefact folder
FOLDER_MARK = ".mpsearch-study.json"  # in an artefact folder: whose it is


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other URLs (and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def _in_memory(url: str) -> bool:
    return url.startswith("sqlite:") and sqlite_path(url) is None


def open_storage(url: str | None, *, create: bool = False) -> Any:
    """An ``optuna.storages.RDBStorage`` for a SQLAlchemy URL.

    Args:
        create: allow creating a new SQLite file (only ``study create`` does).

    Raises:
        MpsearchError: the URL cannot be opened, or the file is not an Optuna database.
    """
    import optuna

    url = url or DEFAULT_STORAGE
    if _in_memory(url):
        raise MpsearchError(f"storage {url!r} is an in-memory database, gone when this command "
                            f"ends; give a file, e.g. {DEFAULT_STORAGE}.")
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
    return rdb_storage(storage)


def storage_error(exc: BaseException) -> str | None:
    """One line for a database error met while reading or writing a study, or None if not one.

    SQLAlchemy wraps the driver's message in a page of context (Optuna wraps that
    again); the driver's own first line says what happened: a read-only file, a full
    disk, a lost server.
    """
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    if not isinstance(exc, (StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
        return None
    cause: BaseException = exc
    while isinstance(cause, StorageInternalError) and cause.__cause__ is not None:
        cause = cause.__cause__
    cause = getattr(cause, "orig", None) or cause
    lines = [" ".join(line.split()) for line in str(cause).splitlines() if line.strip()]
    text = lines[0] if lines else type(cause).__name__
    return f"the study storage failed: {text[:300]}"


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


def study_dir(url: str | None, name: str, uid: str | None = None) -> Path:
    """The artefact folder of study ``name`` stored at ``url``, whose UUID is ``uid``.

    ``mpsearch-studies/<name>-<first 12 hex digits of uid>``; a study created before
    studies had ids (``uid`` None) keeps ``mpsearch-studies/<name>``.

    Raises:
        MpsearchError: ``name`` is not a valid study name (it may come from a database
            that another program wrote: it must never lead outside the folder).
    """
    from mpsearch.spec import check_study_name

    check_study_name(name, "study name")
    path = sqlite_path(url or DEFAULT_STORAGE)
    base = path.resolve().parent if path is not None else Path.cwd()
    if uid is None:
        return base / STUDIES_DIR / name
    return base / STUDIES_DIR / f"{name}-{uuid.UUID(uid).hex[:12]}"


def new_study_id() -> str:
    return str(uuid.uuid4())


def claim_study_dir(url: str | None, study: Any) -> Path:
    """The artefact folder of ``study``, created and marked as its own.

    The study's UUID is read from the study (and given to a study that has none,
    under the study's lock). The folder holds :data:`FOLDER_MARK` naming the study
    and its UUID; a folder marked for another study is refused, so two studies never
    write each other's trials.

    Raises:
        MpsearchError: the folder belongs to another study, or cannot be created.
    """
    uid = study.user_attrs.get(STUDY_ID_ATTR)
    if uid is None:  # made before studies had ids: keep its folder, and mark it as its own now
        with study_lock(study_storage(study), study_id(study)):
            uid = study_storage(study).get_study_user_attrs(study_id(study)).get(STUDY_ID_ATTR)
            if uid is None:
                uid = new_study_id()
                study.set_user_attr(STUDY_ID_ATTR, uid)
        folder = study_dir(url, study.study_name)
    else:
        try:
            uuid.UUID(str(uid))
        except ValueError:
            raise MpsearchError(f"study {study.study_name!r} has an invalid {STUDY_ID_ATTR} "
                                f"{uid!r}; it must be a UUID.") from None
        folder = study_dir(url, study.study_name, str(uid))
    mark = folder / FOLDER_MARK
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if mark.is_file():
            try:
                owner = json.loads(mark.read_text())
            except (OSError, ValueError):
                owner = {}
            if not isinstance(owner, dict) or owner.get("study_id") != uid:
                who = owner.get("study") if isinstance(owner, dict) else None
                raise MpsearchError(f"the artefact folder {str(folder)!r} belongs to another study"
                                    + (f" ({who!r}, id {owner.get('study_id')})" if who else "")
                                    + f", not to study {study.study_name!r} (id {uid}); move that "
                                      f"folder away or run the study from another folder.")
        else:  # a new folder, or the folder of a study made before folders were marked
            mark.write_text(json.dumps({"study": study.study_name, "study_id": uid}) + "\n")
    except OSError as exc:
        raise MpsearchError(f"cannot use the artefact folder {str(folder)!r}: "
                            f"{exc.strerror or exc}.") from None
    return folder


def load_study(url: str | None, name: str) -> Any:
    """An existing study, or a one-line error listing the studies the storage holds."""
    import optuna

    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        from mpsearch.errors import UnknownNameError

        raise UnknownNameError("study", name, optuna.get_all_study_names(storage)) from None
