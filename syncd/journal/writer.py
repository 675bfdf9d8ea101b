"""One write transaction at a time on the journal's connection (``Writer``).

``Writer.transaction()`` groups every change made inside it into ONE ``BEGIN IMMEDIATE ...
COMMIT`` (the coordinator wraps each pass in one); outside it every ``_tx`` is its own
transaction. An SQLite error (disk full, read-only file) is raised as ``LocalError`` and the
journal is left as it was before the transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from syncd.errors import LocalError
from syncd.journal.schema import local_error


class Writer:
    """The write side of the journal's one read-write connection (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self._grouped = False  # inside transaction()
        self._begun = False  # ... and its BEGIN was issued
        self._broken: LocalError | None = None  # a write of this transaction failed

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group every change made inside into one write transaction (begun lazily at the
        first write, so a block that writes nothing costs nothing), committed at the end.

        Raises ``LocalError`` when a write or the commit fails (disk full); the journal is
        then exactly as before the block, and so must be whatever the caller keeps in memory
        about the changes it made inside (see syncd.daemon). Nested blocks join the outer one.
        """
        if self._grouped:
            yield
            return
        self._grouped, self._begun, self._broken = True, False, None
        try:
            yield
            if self._broken is not None:
                raise self._broken
            if self._begun:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    raise local_error(exc, self.path) from None
        except BaseException:
            self._rollback()
            raise
        finally:
            self._grouped = self._begun = False
            self._broken = None

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL, I/O errors): a failing
        # ROLLBACK must not hide the error that says what went wrong.
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _grouped_write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        """One statement inside ``transaction()``."""
        if self._broken is not None:
            raise self._broken  # after a failed write SQLite may have rolled back: write nothing more
        try:
            if not self._begun:
                self.conn.execute("BEGIN IMMEDIATE")
                self._begun = True
            return self.conn.execute(sql, args)
        except sqlite3.OperationalError as exc:
            self._broken = local_error(exc, self.path)
            raise self._broken from None

    def _write_returning(self, sql: str, args: tuple) -> list[tuple]:
        """One statement with a RETURNING clause: its rows."""
        if self._grouped:
            return self._grouped_write(sql, args).fetchall()
        with self.transaction():
            return self._grouped_write(sql, args).fetchall()

    def _tx(self, statements: Iterable[tuple[str, tuple]]) -> None:
        if self._grouped:
            for sql, args in statements:
                self._grouped_write(sql, args)
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self.conn.execute(sql, args)
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.OperationalError as exc:
            raise local_error(exc, self.path) from None
