"""Every experiment and search space the README and the cluster files tell users to run exists,
and every `sweep EXPERIMENT --space SPACE` pair in them validates (a user copying a command must
not meet a missing file or a space that does not fit its experiment)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shiftlab.config import load_experiment
from shiftlab.sweep.space import load_space, validate_space

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "cluster").glob("*.yaml")),
    ROOT / "cluster" / "Dockerfile",
]
FILE = re.compile(r"\b((?:experiments|search_spaces)/[A-Za-z0-9_.-]+\.yaml)\b")
SWEEP = re.compile(
    r"sweep\s+\S*?(experiments/[A-Za-z0-9_.-]+\.yaml)\s+--space\s+\S*?(search_spaces/[A-Za-z0-9_.-]+\.yaml)"
)


def _text(path: Path) -> str:
    return path.read_text().replace("\\\n", " ")  # shell line continuations


def test_referenced_files_exist() -> None:
    refs = {(doc.name, ref) for doc in DOCS for ref in FILE.findall(_text(doc))}
    assert refs, "no references found: the pattern is wrong"
    missing = sorted((doc, ref) for doc, ref in refs if not (ROOT / ref).is_file())
    assert not missing, missing


PAIRS = sorted(
    {pair for doc in DOCS for pair in SWEEP.findall(re.sub(r"\s+#?\s*", " ", _text(doc)))}
)


@pytest.mark.parametrize(("experiment", "space"), PAIRS)
def test_documented_sweeps_validate(experiment: str, space: str, weights_env) -> None:
    cfg = load_experiment(ROOT / experiment, [])
    validate_space(load_space(ROOT / space), cfg, experiment)


def test_documented_sweeps_were_found() -> None:
    assert len(PAIRS) >= 2, PAIRS
