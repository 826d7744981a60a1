"""Storage URLs as text: the default one, and the forms shown and stored without a password.

Nothing here opens a database, so the spec (whose stored form drops the password)
and the command line use it without :mod:`mpsearch.storage`'s machinery.
SQLAlchemy parses the URLs, imported when a function needs it.
"""

from __future__ import annotations

DEFAULT_STORAGE = "sqlite:///mpsearch.db"


def shown_url(url: str | None) -> str:
    """The URL as messages show it: its password, if any, replaced by ``***``."""
    url = url or DEFAULT_STORAGE
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: nothing parseable to hide, but be safe
        head, at, tail = url.rpartition("@")
        return f"{head.split(':', 1)[0]}:***@{tail}" if at and "://" in head else url


def url_without_password(url: str | None) -> str:
    """The URL with its password removed (the driver then reads PGPASSWORD or ~/.pgpass)."""
    url = url or DEFAULT_STORAGE
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001
        return shown_url(url)
    if parsed.password is None:
        return url
    # URL.set(password=None) keeps the password: None there means "unchanged"
    return sqlalchemy.engine.URL.create(
        parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port,
        database=parsed.database, query=parsed.query).render_as_string(hide_password=False)


def password_of(url: str | None) -> str | None:
    """The password a URL holds, or None."""
    import sqlalchemy

    try:
        secret = sqlalchemy.engine.make_url(url or DEFAULT_STORAGE).password
    except Exception:  # noqa: BLE001
        return None
    return str(secret) if secret else None
