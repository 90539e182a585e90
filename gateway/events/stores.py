"""Where inference events and feedback are kept: SQLite (default) or PostgreSQL (by URL).

Stores are synchronous and thread-safe; the event log calls them from worker threads so the
event loop never waits on a database. Every insert is ``ON CONFLICT (id) DO NOTHING``, which
makes replaying a spool after an outage idempotent. Feedback is one row per (inference, metric):
a later value replaces an earlier one (``ON CONFLICT (inference_id, name) DO UPDATE``, by time,
so a late replay of an older value never wins).

Every call is bounded in time, whatever the database does: SQLite waits ``busy_timeout_s`` for
another process's lock; PostgreSQL gets a ``connect_timeout``, a server-side
``statement_timeout``, and a client-side watchdog that severs the socket of a statement that
outlives both (a SIGSTOPped server still completes TCP handshakes and ACKs our bytes, so only
the client can give up). A caller waiting for the store's lock gives up too.

Failures come in two kinds, which the event log treats differently: ``StoreError`` is an outage
(locked, full, read-only, unreachable: the same rows will go in later), and its subclass
``StoreDataError`` is a refusal of the rows themselves (a constraint, a value the database
cannot hold or bind: retrying them will never help).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import StoreDataError, StoreError
from gateway.events.sql import (
    FEEDBACK_UNIQUE,
    FEEDBACK_UNIQUE_INDEX,
    SCHEMA,
    TYPED_TABLES,
    SQLStore,
    Store,
    added_columns,
)

log = logging.getLogger(__name__)

_SQLITE_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeEncodeError)


def _sqlite_error(path: Path, exc: Exception) -> StoreError:
    binding = isinstance(exc, sqlite3.InterfaceError | sqlite3.ProgrammingError) and (
        "binding parameter" in str(exc)  # not "Cannot operate on a closed database."
    )
    kind = StoreDataError if isinstance(exc, _SQLITE_DATA_ERRORS) or binding else StoreError
    return kind(f"{path}: {exc}")


class SQLiteStore(SQLStore):
    """One SQLite file in WAL mode: readers never block the writer."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.url = f"sqlite:///{path}"
        self.path = path
        # Behind another thread's call, which may itself wait out the busy timeout.
        self.lock_timeout_s = 2 * busy_timeout_s + 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Shared across worker threads; the lock serialises use. A write waits up to
            # busy_timeout_s for another process's lock, then fails (and is spooled).
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=busy_timeout_s)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for statement in SCHEMA:
                self._conn.execute(statement)
            for table, row_type in TYPED_TABLES:
                info = self._conn.execute(f"PRAGMA table_info({table})").fetchall()
                for statement in added_columns(table, row_type, (r[1] for r in info)):
                    self._conn.execute(statement)
            unique = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                [FEEDBACK_UNIQUE_INDEX],
            ).fetchone()
            if unique is None:
                for statement in FEEDBACK_UNIQUE:
                    self._conn.execute(statement)
            self._conn.commit()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the event database {path}: {exc}. Fix: make its folder writable, "
                "or set events.url in gateway.yaml"
            ) from exc

    def _execute(self, sql: str, params: Iterable[Sequence[Any]] | None = None) -> None:
        with self._locked():
            try:
                if params is None:
                    self._conn.execute(sql)
                else:
                    self._conn.executemany(sql, params)
                self._conn.commit()
            except (sqlite3.Error, *_SQLITE_DATA_ERRORS) as exc:
                with contextlib.suppress(sqlite3.Error):  # a closed connection cannot roll back
                    self._conn.rollback()
                raise _sqlite_error(self.path, exc) from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[Any]]:
        with self._locked():
            try:
                cursor = self._conn.execute(sql, params)
                return [d[0] for d in cursor.description], cursor.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._locked():
            self._conn.close()


class PostgresStore(SQLStore):
    """PostgreSQL through psycopg 3; reconnects on the next call after a failure.

    Bounded three ways (the URL's own ``connect_timeout`` and ``options=-c statement_timeout=``
    win over the defaults): connecting, each statement on the server, and, for a server that
    hangs (stopped, or a network that drops packets), a watchdog that shuts the socket down
    when a call outlives both, so the blocked thread returns with an error and its rows are
    spooled.
    """

    placeholder = "%s"

    def __init__(
        self, url: str, *, connect_timeout_s: float = 3.0, statement_timeout_s: float = 5.0
    ) -> None:
        from psycopg.conninfo import conninfo_to_dict

        super().__init__()
        self.url = url
        self._conn: Any = None
        params = conninfo_to_dict(url)
        connect_s = float(params.get("connect_timeout") or connect_timeout_s)
        options = str(params.get("options") or "")
        given = _statement_timeout_s(options)
        if given is None:
            options = f"{options} -c statement_timeout={round(statement_timeout_s * 1000)}"
        statement_s = given if given else statement_timeout_s
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, math.ceil(connect_s)),
            "options": options.strip(),
        }
        #: the longest one call may take: connecting, then one statement, then a margin
        self.io_timeout_s = connect_s + statement_s + 1.0
        self.lock_timeout_s = self.io_timeout_s + 1.0
        try:
            with self._locked(), self._watchdog():
                self._connect()
        except StoreError as exc:
            # Start anyway: the event log spools until the database is back.
            log.warning("%s; events will be spooled until it is reachable", exc)

    def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, **self._connect_kwargs)
                with self._conn.cursor() as cur:
                    for statement in SCHEMA:
                        cur.execute(statement)
                    for table, row_type in TYPED_TABLES:
                        cur.execute(
                            "SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = %s AND table_schema = current_schema()",
                            [table],
                        )
                        have = [r[0] for r in cur.fetchall()]
                        for statement in added_columns(table, row_type, have):
                            cur.execute(statement)
                    cur.execute(
                        "SELECT 1 FROM pg_indexes WHERE indexname = %s "
                        "AND schemaname = current_schema()",
                        [FEEDBACK_UNIQUE_INDEX],
                    )
                    if cur.fetchone() is None:
                        for statement in FEEDBACK_UNIQUE:
                            cur.execute(statement)
                self._conn.commit()
            except psycopg.Error as exc:
                if self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._conn.close()
                self._conn = None
                raise StoreError(f"PostgreSQL at {_redact(self.url)}: {exc}") from exc
        return self._conn

    @contextlib.contextmanager
    def _watchdog(self) -> Iterator[None]:
        """Sever the connection if the call inside outlives ``io_timeout_s``."""
        timer = threading.Timer(self.io_timeout_s, self._sever)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            timer.join()  # a sever under way ends before the connection may be closed

    def _sever(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        log.warning(
            "PostgreSQL at %s answered nothing for %g s; closing the connection",
            _redact(self.url),
            self.io_timeout_s,
        )
        with contextlib.suppress(Exception):
            # Shutting the socket down (not closing the descriptor psycopg owns) wakes the
            # thread blocked on it: its read ends, and psycopg raises OperationalError.
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    def _execute(self, sql: str, params: Iterable[Sequence[Any]] | None = None) -> None:
        import psycopg

        with self._locked():
            try:
                with self._watchdog():
                    conn = self._connect()
                    with conn.cursor() as cur:
                        if params is None:
                            cur.execute(sql)
                        else:
                            cur.executemany(sql, list(params))
                    conn.commit()
            except (psycopg.Error, OverflowError, UnicodeEncodeError) as exc:
                self._drop()
                raise _postgres_error(self.url, exc) from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[Any]]:
        import psycopg

        with self._locked():
            try:
                with self._watchdog():
                    conn = self._connect()
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                        rows = cur.fetchall()
                        columns = [d.name for d in cur.description]
                    conn.commit()
                return columns, rows
            except psycopg.Error as exc:
                self._drop()
                raise StoreError(f"PostgreSQL at {_redact(self.url)}: {exc}") from exc

    def _drop(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._locked():
            self._drop()


def _statement_timeout_s(options: str) -> float | None:
    """The ``statement_timeout`` a libpq ``options`` string sets, in seconds (None: not set)."""
    found = re.search(r"statement_timeout\s*=\s*(\d+)\s*(ms|s|min)?", options)
    if found is None:
        return None
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0}[found.group(2) or "ms"]
    return int(found.group(1)) * scale


def _postgres_error(url: str, exc: Exception) -> StoreError:
    """Data errors (constraints, values out of range, NUL in text, values psycopg cannot adapt)
    apart from outages. Other programming errors (a missing column) are taken as outages: the
    rows stay spooled until the schema is fixed, rather than all being quarantined."""
    import psycopg

    data = isinstance(exc, psycopg.IntegrityError | psycopg.DataError) or (
        isinstance(exc, psycopg.ProgrammingError) and "cannot adapt" in str(exc)
    )
    data = data or isinstance(exc, OverflowError | UnicodeEncodeError)
    kind = StoreDataError if data else StoreError
    return kind(f"PostgreSQL at {_redact(url)}: {exc}")


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def open_store(url: str | None, default_path: Path) -> Store:
    """``None`` or ``sqlite:///path`` -> SQLite; ``postgresql://...`` -> PostgreSQL."""
    if url is None:
        return SQLiteStore(default_path)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise StoreError(
        f"unsupported event database URL {_redact(url)}: use sqlite:/// or postgresql://"
    )
