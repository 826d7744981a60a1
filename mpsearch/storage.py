"""Where studies live: Optuna storages from URLs, and each study's artefact folder.

The database is the truth about a study: its spec, every trial's parameters,
values and attributes. Artefacts too large for a database row (assignments,
quantized weights) go to ``mpsearch-studies/<study>/`` beside the SQLite file (or
in the working directory for a server database).
"""

from __future__ import annotations

import sqlite3
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
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors are many and deep
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MpsearchError(f"storage {url!r} cannot be opened: {first}") from exc


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # trials are written by one driver; a generous timeout rides out readers
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


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
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise MpsearchError(f"storage {url!r}: {str(path)!r} is not a readable SQLite database: "
                            f"{exc}.") from exc
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
