"""Persisted dialogue turns, so a killed run resumes where it stopped.

Every turn is stored under the fingerprint of everything that determines its dialogue (the protocol's
``key``; ESC-Eval's is ``esc_eval.dialogue.dialogue_key``) and its index, in one SQLite transaction per
speaker batch (WAL journal: a SIGKILL leaves either the whole batch or none of it). The number of rounds is
not part of the key: turn ``i`` does not depend on how many rounds follow it, so a 3-round run re-uses the
first 6 turns of a 5-round one and a 5-round run extends a 3-round one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from esc_guard_tasks.dialogue.turn import Turn
from esc_guard_tasks.hub import cache_dir
from esc_guard_tasks.sqlite_files import SQLiteFile, check_file, open_checked

# Bump when the engine's way of turning a history into a turn changes (a protocol puts it in its store keys).
STORE_FORMAT = 1
STORE_OFF = "none"
STORE_FILE = SQLiteFile(
    what="dialogue store",
    setting="setting dialogue_store; default dialogues.sqlite in the cache folder $ESC_GUARD_CACHE",
    fix="Move the file away (a new store is started and the turns are generated again),"
    " or run without a store: dialogue_store=none",
    table="turns",
    columns=("dialogue", "turn", "speaker", "text"),
    create_sql="CREATE TABLE IF NOT EXISTS turns (dialogue TEXT NOT NULL, turn INTEGER NOT NULL,"
    " speaker TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (dialogue, turn))",
)
# Beside a turn, whether its prompt was cut to fit the speaker's context (absent: not measured).
TRUNCATION_SQL = (
    "CREATE TABLE IF NOT EXISTS prompt_truncation (dialogue TEXT NOT NULL, turn INTEGER NOT NULL,"
    " truncated INTEGER NOT NULL, PRIMARY KEY (dialogue, turn))"
)


class DialogueStore(Protocol):
    """Where the engine keeps finished turns; ``save`` must be atomic (all turns of a batch or none)."""

    def load(self, keys: Sequence[str]) -> dict[str, list[Turn]]:
        """The stored turns of each known dialogue, in order."""
        ...

    def save(self, turns: Sequence[tuple[str, int, Turn]]) -> None:
        """Persist ``(dialogue key, turn index, turn)`` triples in one transaction."""
        ...


class SQLiteDialogueStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = open_checked(self.path, STORE_FILE)
        with self._db:
            self._db.execute(TRUNCATION_SQL)

    def __repr__(self) -> str:
        return f"dialogue store {self.path}"

    def load(self, keys: Sequence[str]) -> dict[str, list[Turn]]:
        found: dict[str, list[Turn]] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._db.execute(
                "SELECT turns.dialogue, turns.turn, speaker, text, truncated FROM turns LEFT JOIN prompt_truncation"
                " USING (dialogue, turn)"
                f" WHERE turns.dialogue IN ({','.join('?' * len(chunk))}) ORDER BY turns.dialogue, turns.turn",
                chunk,
            ).fetchall()
            for key, index, speaker, text, truncated in rows:
                turns = found.setdefault(key, [])
                if index != len(turns):
                    raise ValueError(
                        f"{self}: dialogue {key[:12]}… has turn {index} where turn {len(turns)} belongs;"
                        " delete the file to start afresh"
                    )
                turns.append(Turn(speaker, text, None if truncated is None else bool(truncated)))
        return found

    def save(self, turns: Sequence[tuple[str, int, Turn]]) -> None:
        with self._db:  # one transaction: committed on exit, rolled back on error
            self._db.executemany(
                "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?)",
                [(key, index, turn.speaker, turn.text) for key, index, turn in turns],
            )
            self._db.executemany(
                "DELETE FROM prompt_truncation WHERE dialogue = ? AND turn = ?", [(k, i) for k, i, _ in turns]
            )
            self._db.executemany(
                "INSERT INTO prompt_truncation VALUES (?, ?, ?)",
                [(k, i, int(t.prompt_truncated)) for k, i, t in turns if t.prompt_truncated is not None],
            )

    def close(self) -> None:
        self._db.close()


def store_path(location: str | None) -> Path | None:
    """``None``: ``dialogues.sqlite`` in the cache folder; ``"none"``: no persistence (None); else a file path."""
    if location is not None and location.strip().lower() == STORE_OFF:
        return None
    return Path(location).expanduser() if location and location.strip() else cache_dir() / "dialogues.sqlite"


def open_store(location: str | None) -> SQLiteDialogueStore | None:
    path = store_path(location)
    return None if path is None else SQLiteDialogueStore(path)


def check_store(location: str | None) -> None:
    """Fail now, before any model loads, if the store file exists and is not a usable dialogue store."""
    path = store_path(location)
    if path is not None:
        check_file(path, STORE_FILE)
