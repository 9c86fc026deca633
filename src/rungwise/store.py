"""The run store: every climb, rung, prompt, completion and score, in SQLite.

Lives at ``$RUNGWISE_HOME/runs.db``. Schema changes are numbered migrations applied in order
(simonw/llm's ``logs.db`` habit), so an old store upgrades in place.

Example:
    >>> store = Store()  # doctest: +SKIP
    >>> store.list_climbs()[:1]  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rungwise import paths
from rungwise.errors import RungwiseError

MIGRATIONS: list[str] = [
    # 1: climbs, rungs, predictions
    """
    CREATE TABLE climbs (
        id INTEGER PRIMARY KEY,
        task_name TEXT NOT NULL,
        task_path TEXT,
        config_hash TEXT NOT NULL,
        config_json TEXT NOT NULL,
        train_hash TEXT NOT NULL,
        test_hash TEXT NOT NULL,
        model_id TEXT NOT NULL,
        n_train INTEGER NOT NULL,
        n_test INTEGER NOT NULL,
        leakage_exact INTEGER NOT NULL DEFAULT 0,
        leakage_normalized INTEGER NOT NULL DEFAULT 0,
        options_json TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'running',
        result_json TEXT,
        rungwise_version TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE rungs (
        id INTEGER PRIMARY KEY,
        climb_id INTEGER NOT NULL REFERENCES climbs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'running',
        artifact_json TEXT NOT NULL DEFAULT '{}',
        result_json TEXT,
        gen_seconds REAL NOT NULL DEFAULT 0,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        UNIQUE (climb_id, name)
    );
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        rung_id INTEGER NOT NULL REFERENCES rungs(id) ON DELETE CASCADE,
        example_id TEXT NOT NULL,
        example_index INTEGER NOT NULL,
        source TEXT,
        input TEXT NOT NULL,
        expected TEXT NOT NULL,
        prompt_json TEXT NOT NULL,
        completion TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL,
        score REAL,
        valid INTEGER,
        parsed TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (rung_id, example_id)
    );
    CREATE INDEX predictions_rung ON predictions(rung_id);
    CREATE INDEX climbs_config ON climbs(config_hash);
    """,
    # 2: per-example traces (retrieved ids, constraint used); a rung's working directory (so a
    # later climb can find its artifact) and why it was skipped
    """
    ALTER TABLE predictions ADD COLUMN trace_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE rungs ADD COLUMN work_dir TEXT;
    ALTER TABLE rungs ADD COLUMN skip_reason TEXT;
    CREATE INDEX rungs_work_dir ON rungs(name, work_dir);
    """,
]


#: Seconds a connection waits for another process's write transaction before giving up.
BUSY_TIMEOUT_S = 30.0


def _store_error(path: Path, exc: sqlite3.Error) -> RungwiseError:
    """What to tell the user when SQLite cannot open or read the store; the file is left as it is."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return RungwiseError(
            f"{path}: not a readable rungwise run store ({exc}); it was left untouched",
            hint=f"move it away (e.g. mv {path} {path}.broken) to start a new store, or set RUNGWISE_HOME to another directory",
        )
    if name == "SQLITE_BUSY":
        return RungwiseError(
            f"{path}: the run store stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s",
            hint="wait for the other rungwise command to finish, then try again",
        )
    return RungwiseError(f"{path}: cannot open the run store ({exc})", hint="set RUNGWISE_HOME to a writable directory")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Store:
    """SQLite run store. One connection per instance; safe to reopen at any time, from any number
    of processes at once (migrations run in one ``BEGIN IMMEDIATE`` transaction, and every
    connection waits up to :data:`BUSY_TIMEOUT_S` for another's write to finish)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else paths.home() / "runs.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA foreign_keys = ON")
            self._use_wal()
            self._migrate()
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from None

    # -- schema --------------------------------------------------------------------------
    def _use_wal(self) -> None:
        """Switch a new store to write-ahead logging (readers never wait for the writer).

        The switch is recorded in the file, so it happens once; but SQLite answers "database is
        locked" at once, without its busy timeout, to a process that asks while another is making
        the same switch, so a first use by several processes retries here.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _migrate(self) -> None:
        if self._applied() == len(MIGRATIONS):
            return
        # The write lock is taken before the version is read, so of several processes opening a
        # new store at once exactly one applies each migration and the others see it done.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            for version, sql in enumerate(MIGRATIONS, 1):
                if version <= self._applied():
                    continue
                for stmt in sql.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, _now()))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _applied(self) -> int:
        """The newest migration applied (0 for a new store)."""
        exists = self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
        return self.schema_version if exists else 0

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # -- climbs --------------------------------------------------------------------------
    def create_climb(self, **fields: Any) -> int:
        fields.setdefault("created_at", _now())
        cols = ", ".join(fields)
        qs = ", ".join("?" for _ in fields)
        cur = self.db.execute(f"INSERT INTO climbs ({cols}) VALUES ({qs})", tuple(fields.values()))
        return int(cur.lastrowid or 0)

    def climb(self, climb_id: int) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM climbs WHERE id = ?", (climb_id,)).fetchone()
        if row is None:
            raise RungwiseError(f"no run {climb_id} in {self.path}", hint="see `rungwise runs list` for run ids")
        return row

    @contextmanager
    def claim_climb(self, climb_id: int) -> Iterator[None]:
        """Hold run ``climb_id`` for the duration of the block: while one process climbs it (a new
        climb or a ``--resume``), another that tries to claim it gets a clear error instead of
        generating the same predictions a second time.

        The claim is an operating-system file lock beside the store (``runs.db.locks/``), so the
        system releases it when the process ends however it ends (even SIGKILL): a crashed climb
        never leaves a stale claim behind.

        Example:
            >>> with store.claim_climb(climb_id):  # doctest: +SKIP
            ...     climb_the_rungs()
        """
        from filelock import FileLock, Timeout

        lock_dir = self.path.with_name(self.path.name + ".locks")
        lock_dir.mkdir(exist_ok=True)
        lock = FileLock(lock_dir / f"climb-{climb_id}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RungwiseError(
                f"run {climb_id} is being climbed by another rungwise process right now",
                hint="wait for it to finish (`rungwise runs list` shows its status), resume another run with "
                "--resume --run ID, or start a new run without --resume",
            ) from None
        try:
            yield
        finally:
            lock.release()

    def latest_unfinished(self, config_hash: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM climbs WHERE config_hash = ? AND status != 'done' ORDER BY id DESC LIMIT 1", (config_hash,)
        ).fetchone()

    def finish_climb(self, climb_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        self.db.execute(
            "UPDATE climbs SET status = ?, result_json = ?, finished_at = ? WHERE id = ?",
            (status, json.dumps(result) if result is not None else None, _now(), climb_id),
        )

    def set_climb_status(self, climb_id: int, status: str) -> None:
        self.db.execute("UPDATE climbs SET status = ? WHERE id = ?", (status, climb_id))

    def list_climbs(self, limit: int = 50) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM climbs ORDER BY id DESC LIMIT ?", (limit,)))

    # -- rungs ---------------------------------------------------------------------------
    def get_or_create_rung(self, climb_id: int, name: str, position: int) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM rungs WHERE climb_id = ? AND name = ?", (climb_id, name)).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO rungs (climb_id, name, position, started_at) VALUES (?, ?, ?, ?)",
                (climb_id, name, position, _now()),
            )
            row = self.db.execute("SELECT * FROM rungs WHERE climb_id = ? AND name = ?", (climb_id, name)).fetchone()
        return row

    def set_rung_artifact(self, rung_id: int, artifact: dict[str, Any], work_dir: str | None = None) -> None:
        self.db.execute(
            "UPDATE rungs SET artifact_json = ?, work_dir = COALESCE(?, work_dir) WHERE id = ?",
            (json.dumps(artifact, default=str), work_dir, rung_id),
        )

    def skip_rung(self, rung_id: int, reason: str) -> None:
        """Record that a rung did not run in this climb, and why (not an error)."""
        self.db.execute(
            "UPDATE rungs SET status = 'skipped', skip_reason = ?, finished_at = ? WHERE id = ?", (reason, _now(), rung_id)
        )

    def latest_artifact(self, name: str, work_dir: str) -> dict[str, Any] | None:
        """The artifact of the newest finished rung ``name`` that worked in ``work_dir`` (an earlier
        climb of the same rung on the same model, settings and train split), or None."""
        row = self.db.execute(
            "SELECT artifact_json FROM rungs WHERE name = ? AND work_dir = ? AND status = 'done' ORDER BY id DESC LIMIT 1",
            (name, work_dir),
        ).fetchone()
        return json.loads(row["artifact_json"]) if row is not None else None

    def add_gen_seconds(self, rung_id: int, seconds: float) -> None:
        self.db.execute("UPDATE rungs SET gen_seconds = gen_seconds + ? WHERE id = ?", (seconds, rung_id))

    def finish_rung(self, rung_id: int, result: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE rungs SET status = 'done', result_json = ?, finished_at = ? WHERE id = ?",
            (json.dumps(result, default=str), _now(), rung_id),
        )

    def rungs(self, climb_id: int) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM rungs WHERE climb_id = ? ORDER BY position", (climb_id,)))

    def rung(self, rung_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM rungs WHERE id = ?", (rung_id,)).fetchone()

    # -- predictions ---------------------------------------------------------------------
    def add_predictions(self, rung_id: int, rows: Iterable[dict[str, Any]]) -> None:
        """Insert a chunk of predictions in one transaction (a crash loses at most one chunk)."""
        now = _now()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO predictions (rung_id, example_id, example_index, source, input, expected, prompt_json,"
                " completion, prompt_tokens, completion_tokens, cached_tokens, latency_s, trace_json, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        rung_id, r["example_id"], r["example_index"], r.get("source"), r["input"], r["expected"],
                        json.dumps(r["prompt"], ensure_ascii=False), r["completion"], r["prompt_tokens"],
                        r["completion_tokens"], r.get("cached_tokens", 0), r["latency_s"],
                        json.dumps(r.get("trace") or {}, ensure_ascii=False, default=str), now,
                    )
                    for r in rows
                ],
            )

    def predictions(self, rung_id: int) -> dict[str, sqlite3.Row]:
        """Stored predictions of a rung, by example id."""
        return {r["example_id"]: r for r in self.db.execute("SELECT * FROM predictions WHERE rung_id = ?", (rung_id,))}

    def set_scores(self, rung_id: int, rows: Sequence[tuple[str, float, bool, str]]) -> None:
        """(example_id, score, valid, parsed) for each scored prediction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE predictions SET score = ?, valid = ?, parsed = ? WHERE rung_id = ? AND example_id = ?",
                [(s, int(v), p, rung_id, eid) for eid, s, v, p in rows],
            )
