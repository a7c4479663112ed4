"""Encoder: prompts, normalisation, token counting (tiny embedder from tests/fixtures)."""

from __future__ import annotations

import numpy as np

from calm_rag.embed import Encoder


def test_vectors_are_unit_float32(tiny_encoder):
    q = tiny_encoder.encode_query(["what pumps blood?", "心脏"])
    d = tiny_encoder.encode_document(["The heart pumps blood.", "狗是动物。", "Le chien"])
    assert q.dtype == np.float32 and d.dtype == np.float32
    assert q.shape == (2, tiny_encoder.dim) and d.shape == (3, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.encode_query([]).shape == (0, tiny_encoder.dim)


def test_prompts_are_prepended(tiny_encoder):
    text = "the heart pumps blood"
    assert tiny_encoder.prompts == {"query": "query: ", "document": "passage: "}
    raw = tiny_encoder.model.encode(["query: " + text, "passage: " + text], normalize_embeddings=True)
    np.testing.assert_allclose(tiny_encoder.encode_query([text])[0], raw[0], atol=1e-5)
    np.testing.assert_allclose(tiny_encoder.encode_document([text])[0], raw[1], atol=1e-5)
    assert not np.allclose(raw[0], raw[1], atol=1e-3)


def test_count_tokens_uses_the_embedder_tokenizer_without_truncation(tiny_encoder):
    text = "the heart pumps blood through the body"
    assert tiny_encoder.count_tokens(text) == len(tiny_encoder.tokenizer.tokenize(text))
    long = " ".join(["heart"] * 300)
    assert tiny_encoder.count_tokens(long) >= 300 > tiny_encoder.max_seq_length
    # Counting must not change the model's own tokenizer settings (padding/truncation).
    assert tiny_encoder.model.tokenize(["x " * 500])["input_ids"].shape[1] <= tiny_encoder.max_seq_length
    starts = tiny_encoder.token_starts("狗是一种家养动物。 The heart")
    assert len(starts) == tiny_encoder.count_tokens("狗是一种家养动物。 The heart")
    assert starts == sorted(starts)


def test_known_prompts_fill_in_for_e5_without_configured_prompts(tiny_encoder):
    class Bare:
        prompts: dict = {}
        max_seq_length = 64

        def get_embedding_dimension(self):
            return 8

    enc = Encoder(Bare(), "intfloat/multilingual-e5-small")
    assert enc.prompts == {"query": "query: ", "document": "passage: "}
    assert Encoder(Bare(), "all-minilm-l6-v2").prompts == {"query": "", "document": ""}
    assert enc.describe()["dim"] == 8
