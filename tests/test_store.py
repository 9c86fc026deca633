"""The run store under concurrency and damage: first use by several processes at once, one
climb claimed by one process at a time, and a file that is not a store."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rungwise.errors import RungwiseError
from rungwise.store import MIGRATIONS, Store


def _open_together(db: Path, n: int) -> list[BaseException]:
    """``n`` threads open the store at ``db`` at the same moment, each with its own connection
    (SQLite locks the file for connections exactly as for processes) and record a climb."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            s = Store(db)
            s.create_climb(task_name="t", config_hash="h", config_json="{}", train_hash="a", test_hash="b",
                           model_id="m", n_train=1, n_test=1)
            s.close()
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_many_first_opens_at_once_all_succeed(tmp_path: Path) -> None:
    """Several climbs started together on an empty store: one migrates, none crashes."""
    for attempt in range(12):
        db = tmp_path / f"runs-{attempt}.db"
        assert _open_together(db, 8) == []
        s = Store(db)
        assert s.schema_version == len(MIGRATIONS) and len(s.list_climbs()) == 8
        versions = [r[0] for r in s.db.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))


HOLDER = textwrap.dedent("""
    import sys, time
    from rungwise.store import Store
    store = Store(sys.argv[1])
    with store.claim_climb(int(sys.argv[2])):
        print("claimed", flush=True)
        time.sleep(120)
""")


def test_a_climb_is_claimed_by_one_process_at_a_time(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = Store(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RungwiseError, match="run 1 is being climbed by another rungwise process"):
            with store.claim_climb(1):
                pass
        with store.claim_climb(2):  # another run is free
            pass
        # a killed holder (no cleanup at all) releases its claim
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with store.claim_climb(1):
            with pytest.raises(RungwiseError, match="run 1 is being climbed"):  # also within one process
                with Store(db).claim_climb(1):
                    pass
        with store.claim_climb(1):  # released on leaving the block
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_file_that_is_not_a_store_is_a_clear_error_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    junk = b"this is not SQLite\n" * 300
    db.write_bytes(junk)
    with pytest.raises(RungwiseError, match="not a readable rungwise run store") as exc:
        Store(db)
    assert "mv " in (exc.value.hint or "")
    assert db.read_bytes() == junk


def test_a_store_locked_too_long_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rungwise.store

    db = tmp_path / "runs.db"
    Store(db).close()
    monkeypatch.setattr(rungwise.store, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(rungwise.store, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE later (x INTEGER)"])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    t0 = time.monotonic()
    with pytest.raises(RungwiseError, match="stayed locked by another process"):
        Store(db)
    assert time.monotonic() - t0 < 10
    other.execute("ROLLBACK")
    assert Store(db).schema_version == len(MIGRATIONS) + 1
