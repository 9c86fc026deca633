"""Regenerate the README's "A real verdict" section from a real run of the main job.

Runs what ``make demo`` runs (``rungwise init`` of the sample task, then ``rungwise climb --all``)
in a fresh folder, times it, reads where the time went from the run store, and replaces the
text between ``<!-- demo:start -->`` and ``<!-- demo:end -->`` in README.md with the printed
ladder, cost table and verdict, as printed (and the timing in BENCHMARKS.md's "demo" section). The README's numbers therefore cannot drift from the
code: rerun this after a change that moves them.

    .venv/bin/python scripts/readme_demo.py            # run, then rewrite the README section
    .venv/bin/python scripts/readme_demo.py --dry-run  # run and print the section only

The embedded model must be installed (``make install``); its one-time conversion is cached under
``$RUNGWISE_HOME`` (a warm install), so a first run on a new machine takes longer by that. The climb
runs with a fresh ``$RUNGWISE_HOME`` that shares only that conversion cache: nothing an earlier run
trained or indexed is reused, so the time is a newcomer's first climb.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _md import machine, today, write_section  # noqa: E402  (the benchmarks' machine line and section writer)

README = ROOT / "README.md"
START, END = "<!-- demo:start -->", "<!-- demo:end -->"
WIDTH = 120  # the console width the output is rendered at (the README's code block)


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("rungwise")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rungwise"]


def _seconds(a: str | None, b: str | None) -> float:
    if not a or not b:
        return 0.0
    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()


def _where_the_time_goes(run_id: int, total: float) -> list[str]:
    """One row per rung: its wall time (preparing + answering), of which training and answering; the rest
    of a fine-tune's time is its audit, plan, model loading and forgetting check."""
    from rungwise.store import Store

    store = Store()
    rows = ["| step | seconds | share | of which |", "|---|---:|---:|---|"]
    accounted = 0.0
    for r in store.rungs(run_id):
        wall = _seconds(r["started_at"], r["finished_at"])
        accounted += wall
        art = json.loads(r["artifact_json"] or "{}")
        answering = float(r["gen_seconds"])
        parts = [f"answering {answering:.0f} s"]
        if art.get("train_seconds"):
            rest = wall - art["train_seconds"] - answering
            parts = ([f"training {art['train_seconds']:.0f} s", parts[0],
                      f"audit, plan, loading and the forgetting check {rest:.0f} s"] if rest >= 0 else
                     [parts[0], "no training: an earlier run's adapter was reused"])
        if r["status"] == "skipped":
            parts = [f"skipped: {r['skip_reason']}"]
        rows.append(f"| {r['name']} | {wall:.0f} | {wall / total:.0%} | {', '.join(parts)} |")
    rest = max(0.0, total - accounted)
    rows.append(f"| loading, split, audit, pricing, report | {rest:.0f} | {rest / total:.0%} | |")
    rows.append(f"| **total** | **{total:.0f}** | 100% | |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the section; leave README.md as it is")
    args = ap.parse_args()

    user_home = Path(os.environ.get("RUNGWISE_HOME") or Path.home() / ".rungwise").expanduser()
    with tempfile.TemporaryDirectory(prefix="rungwise-demo-") as tmp:
        # A first climb, as a newcomer's: a fresh run store and work folders (no adapter or index of an
        # earlier run to reuse); only the warm install's one-time model conversion is carried over.
        home = Path(tmp) / "home"
        home.mkdir()
        if (user_home / "models").is_dir():
            (home / "models").symlink_to(user_home / "models", target_is_directory=True)
        os.environ["RUNGWISE_HOME"] = str(home)  # the run store read below is this climb's
        env = {**os.environ, "COLUMNS": str(WIDTH), "TERM": "dumb", "NO_COLOR": "1"}
        task_dir = Path(tmp) / "demo-task"
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run([*_cli(), "init", str(task_dir)], check=True, env=env, capture_output=True)
        p = subprocess.run([*_cli(), "climb", str(task_dir / "task.yaml"), "--all"], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        total = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        printed = p.stdout.replace(str(home), "~/.rungwise").replace(tmp, "/tmp/demo").rstrip()
        if p.returncode != 0:
            print(printed)
            print(f"the demo climb failed (exit {p.returncode}); README.md left as it is", file=sys.stderr)
            return 1
        m = re.search(r"\(n_test=\d+, run (\d+)\)", printed)
        if m is None:
            print(printed)
            print("could not find the run id in the climb's output", file=sys.stderr)
            return 1
        timing = _where_the_time_goes(int(m.group(1)), total)
    section = "\n".join([
        START,
        f"`make demo` with a warm install on {today()} ({machine()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
        f"{load0:.1f} at the start and {load1:.1f} at the end, on a machine shared with other jobs): "
        f"**{total / 60:.1f} minutes** from `rungwise init` to the verdict, {cpu / 60:.1f} CPU-minutes (user + system, "
        f"all threads: on an idle machine with {os.cpu_count()} cores the wall time is about the CPU time divided by "
        f"the cores torch keeps busy). Where the time went (from the run store):",
        "",
        *timing,
        "",
        "As printed (regenerated by `scripts/readme_demo.py` from this run, so the numbers are the code's):",
        "",
        "```",
        printed,
        "```",
        END,
    ])
    if args.dry_run:
        print(section)
        return 0
    text = README.read_text()
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pat.search(text):
        print(f"README.md has no {START} ... {END} markers", file=sys.stderr)
        return 1
    README.write_text(pat.sub(lambda _m: section, text))
    # The same run's timing in BENCHMARKS.md, where the other speed figures live.
    header = section.split("\n")[1].split(" Where the time went")[0]
    write_section("demo", "\n".join(["## demo: `make demo`, the main job (scripts/readme_demo.py)", "", header, "", *timing]))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
