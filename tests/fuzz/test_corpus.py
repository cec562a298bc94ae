"""Every input in the fuzz corpora, through its target, without a fuzzer: the seeds, what
fuzzing found interesting, and each crash once fixed (saved in its target's corpus), so a
regression fails here in CI on every run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_corpus_input_is_handled(name: str) -> None:
    inputs = sorted((CORPUS / name).iterdir())
    assert inputs, f"no corpus for {name}"
    for path in inputs:
        TARGETS[name](path.read_bytes())
