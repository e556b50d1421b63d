"""Progress: plain periodic lines off a terminal (CI, Ray workers), a tqdm bar on one."""

from __future__ import annotations

import io
import logging

import pytest

from shiftlab.utils.progress import Progress, duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_read_like_a_clock() -> None:
    assert [duration(s) for s in (7.2, 125, 3725)] == ["7s", "2m05s", "1h02m"]


def test_off_a_terminal_progress_is_periodic_lines_with_rate_and_eta(monkeypatch, caplog) -> None:
    monkeypatch.delenv("SHIFTLAB_PROGRESS", raising=False)
    monkeypatch.setenv("SHIFTLAB_PROGRESS_SECONDS", "0")  # a line at every update
    caplog.set_level(logging.INFO, logger="shiftlab.progress")
    with Progress(4, "epoch 1/2", "steps", stream=io.StringIO()) as progress:
        progress.update(1, loss=0.5, lr=0.001)
        progress.update(1, loss=0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("epoch 1/2: 1/4 steps (25%), ")
    assert "steps/s, ETA " in lines[0] and "loss 0.5" in lines[0] and "lr 0.001" in lines[0]
    assert "2/4 steps (50%)" in lines[1] and "loss 0.25" in lines[1]
    assert lines[-1].endswith(")") and "done in" in lines[-1]  # the closing line
    assert len(lines) == 3


def test_lines_wait_for_the_interval(monkeypatch, caplog) -> None:
    monkeypatch.delenv("SHIFTLAB_PROGRESS", raising=False)
    monkeypatch.setenv("SHIFTLAB_PROGRESS_SECONDS", "3600")
    caplog.set_level(logging.INFO, logger="shiftlab.progress")
    with Progress(100, "generate", "images", stream=io.StringIO()) as progress:
        for _ in range(100):
            progress.update(1)
    assert [r.getMessage() for r in caplog.records][-1].startswith("generate: 100/100 images")
    assert len(caplog.records) == 1  # only the closing line within the hour


@pytest.mark.parametrize("forced", ["", "bar"])
def test_a_terminal_gets_a_bar(monkeypatch, caplog, forced: str) -> None:
    monkeypatch.setenv("SHIFTLAB_PROGRESS", forced)
    stream = Terminal() if not forced else io.StringIO()
    caplog.set_level(logging.INFO, logger="shiftlab.progress")
    with Progress(10, "predict", "images", stream=stream) as progress:
        progress.update(10, loss=1.0)
    assert "predict: 100%" in stream.getvalue() and "10/10" in stream.getvalue()
    assert not caplog.records  # the bar replaces the lines


def test_off_means_silent(monkeypatch, caplog) -> None:
    monkeypatch.setenv("SHIFTLAB_PROGRESS", "off")
    caplog.set_level(logging.INFO, logger="shiftlab.progress")
    stream = Terminal()
    with Progress(3, "evaluate", "images", stream=stream) as progress:
        progress.update(3)
    assert not caplog.records and not stream.getvalue()
