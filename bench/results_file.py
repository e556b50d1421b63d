"""bench/RESULTS.md is shared by every benchmark: each rewrites only its own section."""

from __future__ import annotations

import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, text: str, results: Path = RESULTS) -> None:
    """Replace the section starting at ``heading`` (up to the next ``## ``) or append it."""
    from shiftlab.utils.atomic import write_text

    old = results.read_text() if results.is_file() else "# Benchmark results\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[nxt + 1 :] if nxt >= 0 else "")
    write_text(results, new.rstrip("\n") + "\n")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for result headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
