"""Macondo evaluation: v1 prompts only, no double counting, any causal LM for LM-only scoring."""

import numpy as np
import pandas as pd
import pytest
import torch

from knnlm_limits import children, macondo, model
from knnlm_limits.knnlm import SearchResults
from tests.support import default_locales

SMALL = {"n_villagers": 40, "n_parents": 5, "children_counts": [1, 2, 3, 4, 5], "mentions": 2,
         "descriptions": "per_parent", "name_locales": default_locales()}


@pytest.fixture(scope="module")
def village(small_tokenizer):
    return macondo.generate(SMALL, small_tokenizer, seed=0)


def test_v1_evaluation_never_sees_a_description(village, small_tokenizer):
    ex = macondo.prompt_examples(small_tokenizer, village.prompts.prompt, village.prompts.child)
    texts = [small_tokenizer.decode(ex[i]) for i in range(len(ex))]
    for text, row in zip(texts, village.prompts.itertuples()):
        assert text.endswith(f"{row.parent} is the parent of {row.child}")
        assert " who " not in text and row.parent in text
    for desc in village.facts.description:
        assert not any(desc in t for t in texts)


def _model_that_knows_the_children(tok, prompts, steps=10, lr=0.03):
    """A tiny LM whose (untied) head is fitted to the prompts' children for a few Adam steps on
    the fixed features of a random body: it puts most of each prompt's mass on that parent's
    children (per parent 0.66 to 0.97 here), short of all of it, so a sum over a parent's
    children is near its bound of 1 and not at it."""
    from knnlm_limits.tokens import pad_batch, scored_mask

    lm = model.build_model(len(tok), 2, 32, 2, 64, eos_token_id=tok.eos_token_id, seed=0, tie_word_embeddings=False)
    ex = macondo.prompt_examples(tok, prompts.prompt, prompts.child)
    rows = list(range(len(ex)))
    ids, _ = pad_batch(ex, rows)
    scored = scored_mask(ex, rows, ids.size(1))
    with torch.no_grad():
        features = lm.transformer(input_ids=ids).last_hidden_state[:, :-1][scored]
    targets = ids[:, 1:][scored]
    optimizer = torch.optim.Adam(lm.lm_head.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(lm.lm_head(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lm.eval(), ex


def test_child_likelihoods_of_a_parent_sum_to_at_most_one(village, small_tokenizer):
    """On a model that gives each parent's children most of the mass: every row's
    log-likelihood is the model's own log-probability of that child after that prompt
    (computed here one prompt at a time), and each parent's sum of its children's
    probabilities is the sum of those, at most 1 and above 0.5. An untrained model left every
    sum below 0.0013, where a bound of 1 could not catch probabilities 100 times too large,
    nor rows paired with other children's log-likelihoods."""
    tok, prompts = small_tokenizer, village.prompts
    lm, ex = _model_that_knows_the_children(tok, prompts)
    table = children.lm_table(lm, ex, prompts)
    assert len(table) == len(prompts)  # one row per (parent, child), nothing doubled
    by_hand = []
    for row in prompts.itertuples():
        ids = tok(row.prompt, add_special_tokens=False)["input_ids"]
        child = tok(" " + row.child, add_special_tokens=False)["input_ids"]
        assert len(child) == 1  # Macondo's children are single tokens
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([[tok.eos_token_id, *ids]])).logits[0, -1]
        by_hand.append(torch.log_softmax(logits.double(), -1)[child[0]].item())
    # float32 batched (padded) against one prompt alone: 7e-7 apart here, held to 1e-5; the
    # children paired with a neighbouring row's log-likelihood are 0.004 or more off
    np.testing.assert_allclose(table.loglik, by_hand, atol=1e-5)
    np.testing.assert_array_equal(table[["parent", "child"]], prompts[["parent", "child"]])
    sums = children.sum_of_child_probs(table)
    expected = pd.Series(np.exp(by_hand)).groupby(prompts.parent.to_numpy()).sum()
    np.testing.assert_allclose(sums.sort_index(), expected.sort_index(), rtol=1e-5)
    assert (sums <= 1 + 1e-6).all() and sums.min() > 0.5


def _qwen2():
    return model.build_model(200, 2, 32, 2, 64, architecture="qwen2", seed=0).eval()


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64)).eval()


@pytest.mark.parametrize("make", [_qwen2, _gpt_neox], ids=["qwen2", "gpt_neox"])
def test_lm_only_scoring_works_for_any_causal_lm(make):
    """Figure 3 and Figure 1's LM-only runs score with the model's logits alone: no part of
    the decomposition, so even an architecture it does not support (GPT-NeoX) works."""
    from knnlm_limits.tokens import from_sequences

    lm = make()
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    ex = from_sequences(seqs, score_start=[2, 2])
    prompts = pd.DataFrame({"parent": ["a", "b"], "child": ["x", "y"], "n_children": [1, 2]})
    table = children.lm_table(lm, ex, prompts)
    with torch.no_grad():
        for row, seq in enumerate(seqs):
            logp = torch.log_softmax(lm(input_ids=torch.tensor([seq])).logits[0], -1)
            expected = sum(logp[t - 1, seq[t]].item() for t in range(2, len(seq)))
            assert table.loglik.iloc[row] == pytest.approx(expected, abs=1e-4)


def test_loglik_table_methods():
    found = SearchResults(
        lm_logprob=np.log([0.5, 0.2]),
        dists=np.array([[0.0, 1.0], [0.0, 0.0]], np.float32),
        nbr_values=np.array([[3, 4], [7, 7]], np.int32),
        targets=np.array([3, 7]),
        example=np.array([0, 1]),
    )
    prompts = pd.DataFrame({"parent": ["a", "b"], "child": ["x", "y"], "n_children": [1, 1]})
    t = children.loglik_table(found, prompts, lam=0.5, temperature=1.0)
    get = lambda m: t[t.method == m].loglik.to_numpy()  # noqa: E731
    p_knn0 = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(get("lm"), np.log([0.5, 0.2]))
    np.testing.assert_allclose(get("knn"), np.log([p_knn0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(get("knnlm"), np.log([0.5 * p_knn0 + 0.25, 0.5 + 0.1]), atol=1e-6)


def test_a_run_is_evaluated_at_every_checkpoint(village, small_tokenizer, tmp_path):
    """evaluate_run against doing each checkpoint by hand: its LM log-probs, and a kNN whose
    datastore (the run's sentences under that checkpoint) holds each prompt's exact neighbours."""
    from knnlm_limits import datastore
    from knnlm_limits.index import exact_search
    from knnlm_limits.knnlm import lm_and_queries

    prompts = macondo.prompt_examples(small_tokenizer, village.prompts.prompt, village.prompts.child)
    sentences = macondo.sentence_examples(small_tokenizer, village.v1)
    paths = []
    for seed in (0, 1):
        lm = model.build_model(len(small_tokenizer), 2, 32, 2, 64, seed=seed)
        lm.save_pretrained(tmp_path / f"s{seed}")
        paths.append(tmp_path / f"s{seed}")
    knn = {"k": 16, "key": "mlp_input", "batch_tokens": 4096, "exact_max_keys": 10**6, "exact_index": "exact",
           "approximate_index": "IVF4,Flat", "index_train_sample": 1000, "nprobe": 1, "rerank": False}
    run = children.evaluate_run(paths, prompts, sentences, knn)
    assert run.lm_logprob.shape[0] == run.dists.shape[0] == 2 and run.dists.shape[2] == 16
    lm = model.load_lm(str(paths[1]))
    found, queries = lm_and_queries(lm, prompts)
    keys, values = datastore.in_memory(lm, sentences)
    dists, ids = exact_search(keys, queries, 16)
    np.testing.assert_allclose(run.lm_logprob[1], found.lm_logprob, atol=1e-6)
    np.testing.assert_allclose(run.dists[1], dists, rtol=1e-5, atol=1e-5)
    lm_only = children.evaluate_run(paths, prompts)
    assert set(lm_only.arrays()) == {"targets", "example", "lm_logprob"}
    children.save_run(tmp_path / "run.npz", [0, 10], run)
    stored = children.load_run(tmp_path / "run.npz")
    for name, array in run.arrays().items():
        np.testing.assert_array_equal(getattr(stored, name), array)
    table = children.run_table(run, [0, 10], village.prompts, 0.25, 1.0)
    assert set(table.step) == {0, 10} and set(table.method) == {"lm", "knn", "knnlm"}
