"""Macondo evaluation: v1 prompts only, no double counting of the children."""

import numpy as np
import pandas as pd
import pytest
import torch

from knnlm_limits import children, macondo, model
from tests.conftest import default_locales, needs_wikitext

pytestmark = needs_wikitext

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


def test_child_likelihoods_of_a_parent_sum_to_at_most_one(village, small_tokenizer):
    lm = model.build_gpt2(len(small_tokenizer), 2, 32, 2, 64, eos_token_id=small_tokenizer.eos_token_id, seed=0)
    ex = macondo.prompt_examples(small_tokenizer, village.prompts.prompt, village.prompts.child)
    table = children.lm_table(lm, ex, village.prompts)
    assert len(table) == len(village.prompts)  # one row per (parent, child), nothing doubled
    sums = children.sum_of_child_probs(table)
    assert (sums <= 1 + 1e-6).all()
    # and each is the model's probability of that child token after that prompt
    row = village.prompts.iloc[0]
    ids = small_tokenizer(row.prompt, add_special_tokens=False)["input_ids"]
    child = small_tokenizer(" " + row.child, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([[small_tokenizer.eos_token_id, *ids]])).logits[0, -1], -1)
    assert table.loglik.iloc[0] == pytest.approx(logp[child].item(), abs=1e-5)


def test_loglik_table_methods():
    found = {
        "lm_logprob": np.log([0.5, 0.2]),
        "dists": np.array([[0.0, 1.0], [0.0, 0.0]], np.float32),
        "nbr_values": np.array([[3, 4], [7, 7]], np.int32),
        "targets": np.array([3, 7]),
        "example": np.array([0, 1]),
    }
    prompts = pd.DataFrame({"parent": ["a", "b"], "child": ["x", "y"], "n_children": [1, 1]})
    t = children.loglik_table(found, prompts, lam=0.5, temperature=1.0)
    get = lambda m: t[t.method == m].loglik.to_numpy()  # noqa: E731
    p_knn0 = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(get("lm"), np.log([0.5, 0.2]))
    np.testing.assert_allclose(get("knn"), np.log([p_knn0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(get("knnlm"), np.log([0.5 * p_knn0 + 0.25, 0.5 + 0.1]), atol=1e-6)
