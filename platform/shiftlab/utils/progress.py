"""Progress of long work: a tqdm bar on a terminal, plain periodic lines everywhere else.

CI logs, ``ray job submit`` logs and Ray workers (whose output the driver forwards line by
line) get one line every ``SHIFTLAB_PROGRESS_SECONDS`` (default 30) through the ``shiftlab``
logger, with the rate and an ETA; ``SHIFTLAB_PROGRESS=bar|lines|off`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("shiftlab.progress")

MODE_ENV = "SHIFTLAB_PROGRESS"
SECONDS_ENV = "SHIFTLAB_PROGRESS_SECONDS"


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7.2 -> '7s'."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}".rstrip("0")
    return str(value)


def _mode(stream: TextIO) -> str:
    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen in ("bar", "lines", "off"):
        return chosen
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


class Progress:
    """``with Progress(total, "epoch 3/12", "steps") as p: ... p.update(1, loss=0.4)``."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        done: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = done
        self.started = time.perf_counter()
        self._at_start = done
        self.postfix: dict[str, Any] = {}
        stream = stream or sys.stderr
        self.mode = _mode(stream)
        self.interval = float(os.environ.get(SECONDS_ENV, "30"))
        self._next_line = self.started + self.interval
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=f" {unit}", initial=done, file=stream, leave=True
            )

    @property
    def rate(self) -> float:
        """Units per second since this progress started (units done before do not count)."""
        return (self.done - self._at_start) / max(time.perf_counter() - self.started, 1e-9)

    @property
    def eta(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return (self.total - self.done) / self.rate

    def line(self) -> str:
        """``desc: 120/750 steps (16%), 3.20 steps/s, ETA 3m17s, loss 0.41``."""
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        parts = [f"{self.desc}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{self.rate:.2f} {self.unit}/s")
        if self.eta is not None and self.done < (self.total or 0):
            parts.append(f"ETA {duration(self.eta)}")
        parts += [f"{k} {_shown(v)}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(
                    {k: _shown(v) for k, v in self.postfix.items()}, refresh=False
                )
        elif self.mode == "lines" and time.perf_counter() >= self._next_line:
            log.info("%s", self.line())
            self._next_line = time.perf_counter() + self.interval

    def close(self) -> None:
        """The bar stays on screen; in line mode, a last line unless nothing happened."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.done > self._at_start:
            log.info("%s (done in %s)", self.line(), duration(time.perf_counter() - self.started))
            self.mode = "closed"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
