"""Shared fixtures; the tiny models live in tests/fixtures so each stays small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.tiny_lm", "tests.fixtures.tiny_embedder"]

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real QA data and corpora); tests that need it skip with the reason when absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data not found at {SHARED}: these tests read ../shared/data and ../shared/corpora")
    return SHARED


@pytest.fixture
def tiny_model_translations(monkeypatch):
    """The tiny random models write nothing when asked to translate, and an empty translation gives no pair
    (calm_rag.translate); the loop tests that need translated pairs to train on get the source answer back
    as its "translation" (still marked chosen_source="translation"). The translator itself is tested on the
    tiny model in test_rag.py, without this."""
    from calm_rag.translate import Translator

    monkeypatch.setattr(Translator, "many", lambda self, requests: [text for text, _, _ in requests])
