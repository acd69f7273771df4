"""The ``sqlite`` state backend: one database file shared by every worker on one machine.

Each operation is one transaction (``BEGIN IMMEDIATE`` takes the write lock first, so a check and
its count cannot interleave with another worker's); WAL mode keeps readers off the writer's lock
and commits short. Calls run in the worker's event loop: a transaction is tens of microseconds,
and a lock held longer than ``state.timeout`` is a failure (:class:`StateUnavailable`), not a wait.
Times are the machine's clock (``time.time()``), shared by its workers.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Sequence

from . import ADMITTED, PREFIX, Check, Outages, Verdict, Window

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL, ends REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, ends REAL NOT NULL)",
    # Each put deletes the expired values: by this index, not by reading every row.
    "CREATE INDEX IF NOT EXISTS kv_ends ON kv (ends)",
)


def _to_wal(db: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, waiting up to ``timeout`` seconds for another connection.

    While two connections switch a new file to WAL at once, sqlite may answer one of them "database
    is locked" at once, without waiting its busy timeout (two connections opening a new file together
    failed about one time in ten), so the switch is tried again until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.002)


class SQLiteState:
    kind = "sqlite"

    def __init__(self, path: str, timeout: float, outages: Outages) -> None:
        self.path = path
        self.timeout = timeout
        self.outages = outages
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                _to_wal(db, self.timeout)
                db.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _run(self, work):  # type: ignore[no-untyped-def]
        """``work(db)`` in one write transaction; sqlite's errors become ``StateUnavailable``."""
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db is not None and isinstance(exc, sqlite3.DatabaseError) and "locked" not in str(exc):
                self._db.close()  # reopen on the next call (file replaced, disk error)
                self._db = None
            raise self.outages.failed(exc) from None
        self.outages.ok()
        return result

    async def take(self, checks: Sequence[Check]) -> Verdict:
        def work(db: sqlite3.Connection) -> Verdict:
            now = time.time()
            for i, check in enumerate(checks):
                if check.limit is None:
                    continue
                row = db.execute("SELECT value, ends FROM counters WHERE name = ? AND ends > ?",
                                 (PREFIX + check.window.name, now)).fetchone()
                if row is not None and row[0] >= check.limit:
                    return Verdict(i, row[1] - now)
            _count(db, [(c.window, c.amount) for c in checks], now)
            return ADMITTED

        return self._run(work)

    def add_now(self, amounts: Sequence[tuple[Window, float]]) -> None:
        self._run(lambda db: _count(db, amounts, time.time()))

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        self.add_now(amounts)

    async def read(self, windows: Sequence[Window]) -> list[tuple[float, float]]:
        def work(db: sqlite3.Connection) -> list[tuple[float, float]]:
            now = time.time()
            found = []
            for window in windows:
                row = db.execute("SELECT value, ends FROM counters WHERE name = ? AND ends > ?",
                                 (PREFIX + window.name, now)).fetchone()
                found.append((0.0, 0.0) if row is None else (row[0], row[1] - now))
            return found

        return self._run(work)

    async def get(self, key: str) -> bytes | None:
        row = self._run(lambda db: db.execute("SELECT value FROM kv WHERE key = ? AND ends > ?",
                                              (PREFIX + key, time.time())).fetchone())
        return None if row is None else bytes(row[0])

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("DELETE FROM kv WHERE ends <= ?", (now,))
            db.execute("INSERT OR REPLACE INTO kv (key, value, ends) VALUES (?, ?, ?)", (PREFIX + key, value, now + ttl))

        self._run(work)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _count(db: sqlite3.Connection, amounts: Sequence[tuple[Window, float]], now: float) -> None:
    for window, amount in amounts:
        if not amount:
            continue
        # A window that ended starts again at this count.
        db.execute(
            "INSERT INTO counters (name, value, ends) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "value = CASE WHEN ends > ? THEN value + excluded.value ELSE excluded.value END, "
            "ends = CASE WHEN ends > ? THEN ends ELSE excluded.ends END",
            (PREFIX + window.name, amount, now + window.period, now, now),
        )
