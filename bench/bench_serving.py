"""Requests/s through `rungwise serve` over the embedded model, at client concurrency 1, 2, 4 and 8.

One `rungwise serve` process serves the BANKING77 zero-shot rung (the embedded
SmolLM2-135M-Instruct on the local backend, behind the micro-batcher); this process is the
client: rungwise's own openai backend, as a climb against a serving cluster uses it. The
concurrency levels take turns round by round, so the load of other jobs on a shared machine falls
on every level alike, and every figure is a ratio against concurrency 1 measured in the same run.
The answers at every level are compared with those at concurrency 1 (greedy decoding: batching
should not change them).

    python bench/bench_serving.py                     # 48 requests per level, 3 rounds
    python bench/bench_serving.py --n 12 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import ROOT, SHARED, machine, today, write_section  # noqa: E402

DATA = SHARED / "datasets" / "banking77"
TASK = ROOT / "benchmarks" / "banking77" / "task.yaml"
SEED = 13
LEVELS = (1, 2, 4, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, max_batch: int, threads: int, home: str) -> subprocess.Popen[bytes]:
    """`rungwise serve` on the BANKING77 task, from this checkout, in its own process."""
    env = {**os.environ, "RUNGWISE_HOME": home, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
    cmd = [sys.executable, "-m", "rungwise", "serve", str(TASK), "--rung", "zero_shot", "--port", str(port),
           "--max-batch", str(max_batch)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> dict[str, object]:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rungwise serve exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("rungwise serve did not start")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="requests per concurrency level (seeded BANKING77 test sample)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds in which the levels take turns")
    ap.add_argument("--max-batch", type=int, default=8, help="the server's micro-batch limit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (0: torch's default)")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    command = " ".join(["python bench/bench_serving.py", *(argv if argv is not None else sys.argv[1:])])

    import httpx

    from rungwise.backends.openai_compat import OpenAIBackend
    from rungwise.config.task import load_task
    from rungwise.serve import served_name
    from rungwise.types import GenParams

    with open(DATA / "test.csv", newline="", encoding="utf-8") as f:
        test = [(row["text"], row["category"]) for row in csv.DictReader(f)]
    sample = random.Random(SEED).sample(test, args.n)
    prompts = [[{"role": "user", "content": text}] for text, _ in sample]
    name = served_name(load_task(TASK), "zero_shot")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        proc = start_server(port, args.max_batch, args.threads, home)
        try:
            health = wait_ready(url, proc)
            warm = OpenAIBackend(url + "/v1", name, concurrency=1, max_retries=0, timeout_s=600)
            warm.generate(prompts[:2], GenParams())  # first-call paths and the prefix cache, outside the timings
            seconds = dict.fromkeys(LEVELS, 0.0)
            answers: dict[int, dict[int, str]] = {c: {} for c in LEVELS}
            batched = dict.fromkeys(LEVELS, (0, 0))  # requests, batches the server saw
            bounds = [(r * args.n // args.rounds, (r + 1) * args.n // args.rounds) for r in range(args.rounds)]
            load0 = os.getloadavg()[0]
            t_all = time.perf_counter()
            for lo, hi in bounds:
                for c in LEVELS:
                    client = OpenAIBackend(url + "/v1", name, concurrency=c, max_retries=0, timeout_s=600)
                    before = httpx.get(url + "/health").json()
                    t0 = time.perf_counter()
                    out = client.generate(prompts[lo:hi], GenParams())
                    seconds[c] += time.perf_counter() - t0
                    after = httpx.get(url + "/health").json()
                    answers[c].update((lo + i, o.text) for i, o in enumerate(out))
                    req, bat = batched[c]
                    batched[c] = (req + after["requests"] - before["requests"], bat + after["batches"] - before["batches"])
                    print(f"round {lo}-{hi} concurrency {c}: {(hi - lo) / (time.perf_counter() - t0):.2f} req/s",
                          flush=True)
            total = time.perf_counter() - t_all
            load1 = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(30)

    gold = [label for _, label in sample]
    base = args.n / seconds[1]
    rows = []
    for c in LEVELS:
        rate = args.n / seconds[c]
        req, bat = batched[c]
        same = sum(answers[c][i] == answers[1][i] for i in range(args.n))
        correct = sum(answers[c][i].strip().strip(".") == gold[i] for i in range(args.n))
        rows.append(f"| {c} | {rate:.2f} | **{rate / base:.2f}x** | {req / max(bat, 1):.1f} | {same}/{args.n} | "
                    f"{correct / args.n:.3f} |")
        print(f"concurrency {c}: {rate:.2f} req/s ({rate / base:.2f}x), mean batch {req / max(bat, 1):.1f}, "
              f"same answers as concurrency 1: {same}/{args.n}", flush=True)
    lines = [
        "## serving: requests/s through `rungwise serve` as client concurrency rises",
        "",
        f"Machine: {machine()}; torch threads in the server: {args.threads or 'default'}. Date: {today()}. "
        f"`{command}` ({total:.0f} s; load average {load0:.1f} at the start, "
        f"{load1:.1f} at the end, on a machine shared with other jobs).",
        "",
        f"`rungwise serve benchmarks/banking77/task.yaml --rung zero_shot --max-batch {args.max_batch}` in its own "
        f"process ({health.get('backend')}, the micro-batcher in front of the local backend); the client is "
        f"rungwise's openai backend at each concurrency, {args.n} seeded BANKING77 test messages per level, the "
        f"levels taking turns over {args.rounds} rounds. Speed-up is against concurrency 1 in the same run; the mean "
        "batch is what the server's micro-batcher handed the model per generate call.",
        "",
        "| client concurrency | requests/s | vs 1 | mean batch | answers same as at 1 | accuracy |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "The speed-up is the micro-batcher's: concurrent requests share one batched generate call (left padding, "
        "the shared-prefix KV cache). Greedy answers that differ from concurrency 1 come from the batch's padding "
        "in reduced precision, not from mixed-up requests (each answer is checked against its own prompt's).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("serving", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
