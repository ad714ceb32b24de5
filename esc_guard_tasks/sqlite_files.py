"""Opening the package's SQLite files (the dialogue store, the judge cache) so that a damaged one fails at once.

A file that is not a database, a truncated one, a folder in its place or a database of another program would
otherwise surface as a bare ``sqlite3.DatabaseError: file is not a database`` with no path, and for the judge
cache only after every dialogue had been generated. Both files are opened and checked before the first model
loads; the error names the file, the setting that points at it and the fix.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class SQLiteFileError(ValueError):
    """A store or cache file that cannot be used; the message names the file, its setting and the fix."""


@dataclass(frozen=True)
class SQLiteFile:
    """What one of our SQLite files is, for the error message, and the one table it must hold."""

    what: str  # "dialogue store"
    setting: str  # how the user points at it
    fix: str
    table: str
    columns: tuple[str, ...]
    create_sql: str


# Files whose check passed in this process, by (path, size, mtime): the task set-up, each task and the
# engine all open the same file, and ``PRAGMA quick_check`` reads every page.
_CHECKED: set[tuple[str, int, int]] = set()


def open_checked(path: Path, kind: SQLiteFile, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (or create) ``path`` as ``kind``: WAL journal, its table, and an intact file, or SQLiteFileError."""
    path = Path(path)
    if path.is_dir():
        raise _error(path, kind, "is a folder, not a file")
    _make_parent(path, kind)
    try:
        # A long timeout: data-parallel ranks write to the same file.
        db = sqlite3.connect(path, timeout=120, check_same_thread=check_same_thread)
    except sqlite3.Error as err:
        raise _error(path, kind, f"cannot be opened ({err})") from None
    try:
        problem = _problem(db, path, kind)
    except sqlite3.Error as err:
        problem = f"is not a usable SQLite database ({type(err).__name__}: {err})"
    if problem:
        db.close()
        raise _error(path, kind, problem)
    return db


def check_file(path: Path, kind: SQLiteFile) -> None:
    """Fail now if ``path`` is not a usable ``kind``; a missing file is made when first needed (its folder now)."""
    path = Path(path)
    if not path.exists():
        _make_parent(path, kind)
    elif not path.is_file() or _stamp(path) not in _CHECKED:
        open_checked(path, kind).close()


def _error(path: Path, kind: SQLiteFile, problem: str) -> SQLiteFileError:
    return SQLiteFileError(f"{path}: the {kind.what} ({kind.setting}) {problem}. {kind.fix}")


def _make_parent(path: Path, kind: SQLiteFile) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(path, kind, f"cannot be created in {path.parent} ({err.strerror or err})") from None


def _problem(db: sqlite3.Connection, path: Path, kind: SQLiteFile) -> str | None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(kind.create_sql)
    db.commit()
    columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({kind.table})"))
    if columns != kind.columns:
        return f"has a table '{kind.table}' with columns {list(columns)}, not {list(kind.columns)}"
    stamp = _stamp(path)
    if stamp not in _CHECKED:
        found = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            return f"is damaged ({'; '.join(found)})"
        _CHECKED.add(stamp)
    return None


def _stamp(path: Path) -> tuple[str, int, int]:
    status = os.stat(path)
    return (str(path.resolve()), status.st_size, status.st_mtime_ns)
