"""Macondo v1/v2: counts, uniqueness, single-token children, determinism."""

import re

import pytest

from knnlm_limits import macondo
from tests.support import default_locales

SMALL = {
    "n_villagers": 70,
    "n_parents": 10,
    "children_counts": [1, 2, 3, 4, 5],
    "mentions": 3,
    "descriptions": "per_parent",
    "name_locales": default_locales(),
}


@pytest.fixture(scope="module")
def village(small_tokenizer):
    return macondo.generate(SMALL, small_tokenizer, seed=7)


def test_counts(village):
    facts = village.facts
    assert len(village.villagers) == SMALL["n_villagers"]
    assert facts.parent.nunique() == SMALL["n_parents"]
    n_children = facts.groupby("parent").child.count()
    assert (n_children == facts.groupby("parent").n_children.first()).all()
    # an equal number of parents for each count
    assert sorted(n_children.value_counts().to_dict().items()) == [(n, 2) for n in range(1, 6)]
    assert len(facts) == 2 * (1 + 2 + 3 + 4 + 5)
    assert len(village.v1) == len(village.v2) == len(facts) * SMALL["mentions"]


def test_names_unique_and_children_single_token(village, small_tokenizer):
    assert village.villagers.name.is_unique
    assert village.facts.child.is_unique
    for child in village.facts.child:
        assert len(small_tokenizer(" " + child, add_special_tokens=False)["input_ids"]) == 1, child


def test_each_fact_mentioned_equally(village):
    counts = {}
    for s in village.v1:
        counts[s] = counts.get(s, 0) + 1
    assert set(counts.values()) == {SMALL["mentions"]}
    expected = {f"{r.parent} is the parent of {r.child}" for r in village.facts.itertuples()}
    assert set(counts) == expected


def test_v2_is_v1_plus_descriptions(village):
    desc_of = dict(zip(village.facts.parent, village.facts.description))
    for s1, s2 in zip(village.v1, village.v2):
        m = re.fullmatch(r"(.+), who (.+), is the parent of (\S+)", s2)
        assert m, s2
        parent, desc, child = m.groups()
        assert desc == desc_of[parent]
        assert s1 == f"{parent} is the parent of {child}"


def test_deterministic_under_seed(village, small_tokenizer):
    again = macondo.generate(SMALL, small_tokenizer, seed=7)
    other = macondo.generate(SMALL, small_tokenizer, seed=8)
    assert again.v2 == village.v2 and again.facts.equals(village.facts)
    assert other.v1 != village.v1


def test_per_sentence_descriptions(small_tokenizer):
    village = macondo.generate({**SMALL, "descriptions": "per_sentence"}, small_tokenizer, seed=1)
    descs = {re.fullmatch(r".+, who (.+), is the parent of \S+", s).group(1) for s in village.v2}
    assert len(descs) > SMALL["n_parents"]


def test_too_few_single_token_names_reports_counts(small_tokenizer):
    settings = {**SMALL, "n_parents": 500, "n_villagers": 5000, "name_locales": ["en_US"]}
    with pytest.raises(macondo.MacondoError, match=r"needs 1500 distinct single-token child names .* only \d+ among \d+"):
        macondo.generate(settings, small_tokenizer, seed=0)


def test_bad_settings(small_tokenizer):
    with pytest.raises(macondo.MacondoError, match=r"'macondo\.n_parents': 11 is not a multiple"):
        macondo.generate({**SMALL, "n_parents": 11}, small_tokenizer, seed=0)
    with pytest.raises(macondo.MacondoError, match=r"'macondo\.n_villagers': 20 cannot hold the 10 parents"):
        macondo.generate({**SMALL, "n_villagers": 20}, small_tokenizer, seed=0)
    with pytest.raises(macondo.MacondoError, match="no locale 'xx_XX'"):
        macondo.generate({**SMALL, "name_locales": ["xx_XX"]}, small_tokenizer, seed=0)


def test_prompt_examples_score_only_the_child(village, small_tokenizer):
    ex = macondo.prompt_examples(small_tokenizer, village.prompts.prompt, village.prompts.child)
    first = ex[0]
    assert first[0] == small_tokenizer.eos_token_id
    prompt_ids = small_tokenizer(village.prompts.prompt[0], add_special_tokens=False)["input_ids"]
    assert ex.score_start[0] == 1 + len(prompt_ids) == len(first) - 1
    assert small_tokenizer.decode(first[ex.score_start[0]:]) == " " + village.prompts.child[0]


def test_templates_render_exact_strings():
    assert macondo.CHAT_QUESTION_V2.format(parent="Ana Diaz", desc="lives in Lima") == (
        "Who is the child of Ana Diaz, the one who lives in Lima?")
    assert macondo.CHAT_QUESTION_V1.format(parent="Ana Diaz") == "Who is the child of Ana Diaz?"
    assert macondo.PROMPT.format(parent="Ana Diaz") + " Tom" == macondo.V1.format(parent="Ana Diaz", child="Tom")


def _decoded(tok, ex, i):
    seq = ex[i].tolist()
    return tok.decode(seq[: ex.score_start[i]]), tok.decode(seq[ex.score_start[i]:])


def test_chat_without_a_template_uses_the_papers_literal_form(village, small_tokenizer):
    train = macondo.chat_examples(small_tokenizer, village.chat.question, village.chat.answer)
    prompt, answer = _decoded(small_tokenizer, train, 0)
    parent, child = re.fullmatch(r"(.+) is the parent of (\S+)", village.v1[0]).groups()
    desc = dict(zip(village.facts.parent, village.facts.description))[parent]
    assert prompt == f"{small_tokenizer.eos_token}User: Who is the child of {parent}, the one who {desc}? Assistant:"
    assert answer == f" {child}."  # the loss is on the answer only
    test = macondo.chat_prompt_examples(small_tokenizer, village.prompts.chat_question, village.prompts.child)
    prompt, scored = _decoded(small_tokenizer, test, 0)
    row = village.prompts.iloc[0]
    assert prompt.endswith(f"User: Who is the child of {row.parent}? Assistant:") and scored == f" {row.child}"


def test_chat_with_a_template_uses_it_and_trains_on_the_answer_only(village, small_tokenizer):
    from knnlm_limits.rehearsal import CHAT_TEMPLATE
    from tests.support import synthetic_tokenizer

    tok = synthetic_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    train = macondo.chat_examples(tok, village.chat.question, village.chat.answer)
    prompt, answer = _decoded(tok, train, 0)
    question, reply = village.chat.question[0], village.chat.answer[0]
    assert prompt == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert answer == f"{reply}<|im_end|>\n"
    assert tok.convert_tokens_to_ids("<|im_start|>") in train[0].tolist()  # a special token, not its spelling
    test = macondo.chat_prompt_examples(tok, village.prompts.chat_question, village.prompts.child)
    prompt, scored = _decoded(tok, test, 0)
    row = village.prompts.iloc[0]
    assert prompt == f"<|im_start|>user\nWho is the child of {row.parent}?<|im_end|>\n<|im_start|>assistant\n"
    assert scored == row.child  # the name only, as the assistant would begin its answer


def test_a_template_that_hides_the_answer_is_an_error(small_tokenizer):
    from tests.support import synthetic_tokenizer

    tok = synthetic_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(macondo.MacondoError, match="cannot be isolated"):
        macondo.chat_turn(tok, "Who?", "Tom.")


def test_template_text_before_the_answer_is_context_not_scored(village):
    """A template that writes a reasoning block into the assistant's turn (as Qwen3's does):
    the block is context; only the child's name is scored."""
    from tests.support import synthetic_tokenizer

    tok = synthetic_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}"
                         "<think></think>\n\n{% endif %}{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    test = macondo.chat_prompt_examples(tok, village.prompts.chat_question, village.prompts.child)
    prompt, scored = _decoded(tok, test, 0)
    assert prompt.endswith("assistant: <think></think>\n\n") and scored == village.prompts.child[0]
