"""Where the sandbox's state goes between restarts: nowhere, or one SQLite file of JSON records."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class StateStore:
    """Where state goes between restarts: nowhere. The SQLite store below keeps it."""

    def records(self) -> Iterator[tuple[str, Any]]:
        return iter(())

    def put(self, kind: str, key: str, value: Any) -> None:
        """Save one record (insert or replace)."""

    def put_many(self, kind: str, items: Iterable[tuple[str, Any]]) -> None:
        """Save many records in one transaction."""

    def delete(self, kind: str, key: str) -> None:
        """Forget one record."""

    def delete_kinds(self, kinds: Iterable[str]) -> None:
        """Forget every record of these kinds (one service's reset)."""

    def clear(self) -> None:
        """Forget everything."""

    def close(self) -> None:
        """Release the file."""


def _body(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SQLiteStateStore(StateStore):
    """One SQLite table of JSON records keyed by (kind, key), in first-written order.

    The sandbox plays WeCom, so its file holds customers' mobiles: they stay in this binary
    file. WAL with synchronous=NORMAL keeps one write per mutation in the tens of microseconds.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS record ("
            " kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (kind, key))"
        )
        self._lock = threading.Lock()

    # An upsert keeps the rowid of the first write, so "ORDER BY rowid" is creation order.
    _UPSERT = (
        "INSERT INTO record (kind, key, body) VALUES (?, ?, ?)"
        " ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body"
    )

    def records(self) -> Iterator[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT kind, body FROM record ORDER BY rowid").fetchall()
        for kind, body in rows:
            yield kind, json.loads(body)

    def put(self, kind: str, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(self._UPSERT, (kind, key, _body(value)))

    def put_many(self, kind: str, items: Iterable[tuple[str, Any]]) -> None:
        rows = [(kind, key, _body(value)) for key, value in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(self._UPSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM record WHERE kind = ? AND key = ?", (kind, key))

    def delete_kinds(self, kinds: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM record WHERE kind = ?", [(k,) for k in kinds])

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM record")

    def close(self) -> None:
        with self._lock:
            self._db.close()
