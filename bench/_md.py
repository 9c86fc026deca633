"""Write one benchmark's section of BENCHMARKS.md, between markers, keeping the others."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT / "BENCHMARKS.md"
SHARED = Path(os.environ.get("RUNGWISE_SHARED", ROOT.parent / "shared"))
HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench` (each script under `bench/` rewrites its own section). Every speed figure is a\n"
    "ratio against a baseline measured in the same run, on the machine named in the section.\n"
)


def machine() -> str:
    """A one-line description of this machine: CPU model, cores, memory, torch version, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    extra = ""
    try:
        import torch

        extra = f", torch {torch.__version__}"
        if torch.cuda.is_available():
            extra += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{extra}"


def today() -> str:
    return _dt.date.today().isoformat()


def _markers(name: str) -> tuple[str, str, re.Pattern[str]]:
    """The start and end markers of the section ``name`` and the pattern of the whole section (body as group 1)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    return start, end, re.compile(re.escape(start) + r"(.*?)" + re.escape(end), re.S)


def read_section(name: str) -> str:
    """The body of the section ``name`` in BENCHMARKS.md ("" when there is none)."""
    m = _markers(name)[2].search(MD.read_text() if MD.exists() else "")
    return m.group(1) if m else ""


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` in BENCHMARKS.md."""
    text = MD.read_text() if MD.exists() else HEADER
    start, end, pat = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    MD.write_text(text)
