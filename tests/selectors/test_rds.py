"""RDS+ kernels: the position-weighted pooling equals a direct computation from the hidden
states (curamix's proxy LM and a Hugging Face causal LM), the round-robin equals a plain
transcription of the reference's ``get_top_aggregated_influences.py`` (ties and duplicates
included), each task gets its share, a document near a task's queries ranks first, and bad
input is named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curamix.proxy.model import ProxyLM, ProxyModelConfig
from curamix.proxy.tokenizer import eos_id, train_tokenizer
from curamix.selectors.rds import (
    HFCausalLMEncoder,
    ProxyLMEncoder,
    RDSSelector,
    l2_normalize,
    position_weights,
    round_robin,
    task_scores,
    top_max,
    weighted_mean_pool,
)

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "Which of the following is a renewable resource? (A) coal (B) wind (C) oil (D) gas",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "A short one.",
    "In 1066 the Normans crossed the Channel and won the battle of Hastings, changing England.",
    "x",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 3, vocab_size=300)


@pytest.fixture(scope="module")
def proxy():
    cfg = ProxyModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, seq_len=24)
    return ProxyLM(cfg, random_state=3).eval()


# --- pooling -----------------------------------------------------------------------------------


def test_position_weights_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    w = position_weights(mask).numpy()
    np.testing.assert_allclose(w[0], [1 / 6, 2 / 6, 3 / 6, 0])
    np.testing.assert_allclose(w[1], [0, 1 / 3, 2 / 3, 0])  # left padding: i counts real tokens
    np.testing.assert_allclose(w[2], [0, 0, 0, 0])
    np.testing.assert_allclose(w[3], [1, 0, 0, 0])
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    pooled = weighted_mean_pool(h, mask[:2]).numpy()
    np.testing.assert_allclose(pooled[:, 0], [(0 + 2 + 6) / 6, (5 * 1 + 6 * 2) / 3], rtol=1e-6)


def test_last_hidden_is_what_the_head_reads(proxy):
    idx = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = proxy.last_hidden(idx)
        torch.testing.assert_close(torch.nn.functional.linear(h, proxy.embed.weight), proxy(idx))


def _reference_pool(hidden: torch.Tensor) -> np.ndarray:
    """The reference's weighted_mean branch (compute_influence_cosinesim.py, batch size 1, no
    padding), then its L2 normalisation."""
    weighting_mask = torch.arange(hidden.size(1)).unsqueeze(0) + 1
    weighting_mask = weighting_mask / weighting_mask.sum(dim=1, keepdim=True)
    emb = torch.sum(hidden * weighting_mask.unsqueeze(-1), dim=1)
    emb = emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True)
    return emb[0].numpy()


def test_proxy_vectors_equal_a_plain_loop(proxy, tokenizer):
    enc = ProxyLMEncoder(proxy, tokenizer, max_tokens=16, batch_size=3)  # padded batches
    got = enc.encode(TEXTS)
    bos = eos_id(tokenizer)
    for i, text in enumerate(TEXTS):
        ids = [bos, *tokenizer.encode(text, add_special_tokens=False).ids][:16]
        with torch.no_grad():
            hidden = proxy.last_hidden(torch.tensor([ids]))
        # the same weights written out: w_i = i / sum(1..n)
        n = len(ids)
        w = np.arange(1, n + 1) / (n * (n + 1) / 2)
        direct = (hidden[0].double().numpy() * w[:, None]).sum(axis=0)
        np.testing.assert_allclose(got[i], direct / np.linalg.norm(direct), atol=2e-6)
        np.testing.assert_allclose(got[i], _reference_pool(hidden), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    # Batch composition does not matter (padding is masked, the model is causal).
    one = ProxyLMEncoder(proxy, tokenizer, max_tokens=16, batch_size=1).encode(TEXTS)
    np.testing.assert_allclose(got, one, atol=2e-6)
    # Cut to max_tokens: two texts that agree on their first 15 tokens get the same vector.
    long = TEXTS[0] * 4
    a, b = enc.encode([long, long + " and then something entirely different at the end"])
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a Hugging Face folder, with a fast tokenizer built from the
    curamix BPE tokenizer (so nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    tok.save_pretrained(path)
    return path


def test_hf_vectors_equal_the_reference_loop(hf_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    enc = HFCausalLMEncoder.load(str(hf_model), device="cpu", max_tokens=20, batch_size=4)
    got = enc.encode(TEXTS)
    model = AutoModelForCausalLM.from_pretrained(hf_model, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(hf_model, local_files_only=True)
    for i, text in enumerate(TEXTS):
        inputs = tok(text, truncation=True, max_length=20, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        # hidden_states[-1] is after the final norm: the LM head's input.
        torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)
        np.testing.assert_allclose(got[i], _reference_pool(out["hidden_states"][-1]), atol=2e-6)


def test_hf_path_that_cannot_load_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"cannot load a causal LM .* from '.*nowhere'"):
        HFCausalLMEncoder.load(str(tmp_path / "nowhere"), device="cpu")


# --- scores ------------------------------------------------------------------------------------


def test_task_scores_equal_brute_force():
    rng = np.random.default_rng(0)
    docs = l2_normalize(rng.normal(size=(200, 16)))
    queries = l2_normalize(rng.normal(size=(7, 16)))
    s, nn = task_scores(docs, queries)
    sims = docs @ queries.T
    np.testing.assert_allclose(s, sims.max(axis=1), atol=1e-6)
    assert (nn == sims.argmax(axis=1)).all()


def test_a_document_near_a_tasks_queries_ranks_first(proxy, tokenizer):
    enc = ProxyLMEncoder(proxy, tokenizer, batch_size=4)
    queries = {
        "math": [TEXTS[0], "Tom has 3 apples and buys 5 more. How many apples does he have?"],
        "science": [TEXTS[1]],
    }
    pool = [*TEXTS[2:], TEXTS[0].replace("April", "March"), TEXTS[1].replace("wind", "solar")]
    sel = RDSSelector().fit({t: enc.encode(q) for t, q in queries.items()})
    s = sel.score_samples(enc.encode(pool))
    assert s.shape == (len(pool), 2)
    assert int(np.argmax(s[:, 0])) == len(pool) - 2  # the near copy of a math query
    assert int(np.argmax(s[:, 1])) == len(pool) - 1  # the near copy of the science query
    chosen = sel.select(s, 2)
    assert sorted(chosen.positions.tolist()) == [len(pool) - 2, len(pool) - 1]
    assert chosen.per_task(2).tolist() == [1, 1]


# --- the multi-task budget ---------------------------------------------------------------------


def reference_round_robin(per_task_cos: list[np.ndarray], output_size: int) -> dict[int, float]:
    """A plain transcription of hamishivi/automated-instruction-selection,
    minimal_multitask/get_top_aggregated_influences.py (commit df71a04), with
    ``--selection_method max --aggregation_method round_robin``: ``per_task_cos[t]`` is one
    task's pickle, cosine similarities (test points x train points) as
    compute_influence_cosinesim.py saves them. Returns ``inter_dataset_scores`` (insertion
    order = selection order)."""
    per_dataset_influences = {}
    for t, sims in enumerate(per_task_cos):
        instance_to_influences = {
            i: {j: float(sims[i][j]) for j in range(sims.shape[1])} for i in range(sims.shape[0])
        }
        all_train_scores = {}
        for _i, influences in instance_to_influences.items():
            for train_idx, score in influences.items():
                if train_idx not in all_train_scores:
                    all_train_scores[train_idx] = []
                all_train_scores[train_idx].append(score)
        overall_influences = {k: max(v) for k, v in all_train_scores.items()}
        per_dataset_influences[f"task{t}.pkl"] = overall_influences
    inter_dataset_scores = {}
    for ds_name, dataset_scores in per_dataset_influences.items():
        per_dataset_influences[ds_name] = sorted(
            dataset_scores.items(), key=lambda x: x[1], reverse=True
        )
    while len(inter_dataset_scores) < output_size:
        for ds_name in per_dataset_influences.keys():  # noqa: SIM118 (verbatim)
            if len(inter_dataset_scores) >= output_size:
                break
            idx, score = per_dataset_influences[ds_name].pop(0)
            inter_dataset_scores[idx] = min(score, inter_dataset_scores.get(idx, math.inf))
    return inter_dataset_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [1, 2, 7, 30, 59, 60])
def test_round_robin_equals_the_reference(seed, budget):
    rng = np.random.default_rng(seed)
    n_docs = 60
    # Rounded to one decimal: many ties inside a task and overlapping preferences across tasks.
    cos = [np.round(rng.uniform(-1, 1, size=(q, n_docs)), 1) for q in (3, 1, 5)]
    want = reference_round_robin(cos, budget)
    scores = np.stack([c.max(axis=0) for c in cos], axis=1)
    got = round_robin(scores, budget)
    assert got.positions.tolist() == list(want)
    np.testing.assert_array_equal(got.score, list(want.values()))
    assert len(set(got.positions.tolist())) == budget


def test_round_robin_spends_a_turn_on_a_duplicate_by_hand():
    # Both tasks rank 0 > 1 > 2 > 3: task 1's turns all fall on task 0's picks.
    s = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.4], [0.3, 0.2]])
    got = round_robin(s, 3)
    assert got.positions.tolist() == [0, 1, 2]
    assert got.per_task(2).tolist() == [3, 0]
    assert got.pops == 5  # t0:0, t1:0 (spent), t0:1, t1:1 (spent), t0:2 -> budget met
    np.testing.assert_allclose(got.score, [0.8, 0.6, 0.5])  # the smaller of the two pops
    assert reference_round_robin([s[:, :1].T, s[:, 1:].T], 3) == dict(
        zip([0, 1, 2], [0.8, 0.6, 0.5], strict=True)
    )


def _clusters(n_tasks: int, per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Documents in ``n_tasks`` tight clusters around orthogonal directions, and per task a
    few queries near its direction: disjoint preferences."""
    rng = np.random.default_rng(seed)
    dim = 16
    docs = np.concatenate(
        [np.eye(dim)[t] + 0.1 * rng.normal(size=(per, dim)) for t in range(n_tasks)]
    )
    return l2_normalize(docs), np.repeat(np.arange(n_tasks), per)


def test_round_robin_gives_each_task_its_share():
    docs, cluster = _clusters(3, 40)
    rng = np.random.default_rng(1)
    queries = {
        f"task{t}": l2_normalize(np.eye(16)[t] + 0.1 * rng.normal(size=(5, 16))) for t in range(3)
    }
    sel = RDSSelector().fit(queries)
    s = sel.score_samples(docs)
    got = sel.select(s, 30)
    assert got.per_task(3).tolist() == [10, 10, 10]
    assert (cluster[got.positions] == got.task).all()  # each task took its own cluster's docs
    # Each task's ten are its ten best-scored documents.
    for t in range(3):
        best = set(np.argsort(-s[:, t], kind="stable")[:10].tolist())
        assert set(got.positions[got.task == t].tolist()) == best


def test_round_robin_is_not_dominated_by_score_scale():
    docs, cluster = _clusters(2, 50)
    s = np.stack([docs @ np.eye(16)[0] * 0.1 + 0.9, docs @ np.eye(16)[1] * 0.1], axis=1)
    # Task 0's scores are all above task 1's: the max over tasks picks task 0's documents only.
    assert (cluster[top_max(s, 20).positions] == 0).all()
    rr = round_robin(s, 20)
    assert np.bincount(cluster[rr.positions]).tolist() == [10, 10]


def test_token_budget_stops_at_the_first_document_that_reaches_it():
    s = np.array([[0.9], [0.8], [0.7], [0.6]])
    sizes = np.array([10, 20, 30, 40])
    assert round_robin(s, 30, sizes).positions.tolist() == [0, 1]
    assert round_robin(s, 31, sizes).positions.tolist() == [0, 1, 2]
    assert top_max(s, 31, sizes).positions.tolist() == [0, 1, 2]
    assert round_robin(s, 100, sizes).positions.tolist() == [0, 1, 2, 3]


def test_top_max_ties_go_to_the_lower_position():
    s = np.array([[0.5, 0.1], [0.2, 0.7], [0.7, 0.0], [0.1, 0.5]])
    got = top_max(s, 3)
    assert got.positions.tolist() == [1, 2, 0]
    assert got.task.tolist() == [1, 0, 0]
    np.testing.assert_allclose(got.score, [0.7, 0.7, 0.5])


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_named():
    s = np.zeros((5, 2))
    with pytest.raises(
        ValueError, match=r"budget must be a whole number of documents in 1\.\.5, got 6"
    ):
        round_robin(s, 6)
    with pytest.raises(ValueError, match=r"got 0"):
        top_max(s, 0)
    with pytest.raises(ValueError, match=r"\(0, 15\] \(the pool's total size\), got 16"):
        round_robin(s, 16, sizes=np.full(5, 3))
    with pytest.raises(ValueError, match=r"task 'arc' has an empty query set"):
        RDSSelector().fit({"gsm8k": np.ones((2, 4)), "arc": np.zeros((0, 4))})
    with pytest.raises(ValueError, match=r"aggregation must be 'round_robin' or 'max', got 'min'"):
        RDSSelector("min").fit({"a": np.ones((1, 4))})
    with pytest.raises(ValueError, match="differ in dimension"):
        RDSSelector().fit({"a": np.ones((1, 4)), "b": np.ones((1, 3))})
    with pytest.raises(ValueError, match="query set is empty"):
        task_scores(np.ones((3, 4)), np.zeros((0, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        RDSSelector().score_samples(np.ones((3, 4)))
