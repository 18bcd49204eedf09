"""Macondo v1 and v2: synthetic villages of parents and children (paper sections 4-5).

Villagers have unique full names "First Last" drawn from Faker's name lists.
Some are parents of 1..5 children; each child has a distinct first name that is
a single token (with its leading space) of the workflow's tokenizer, so that the
child's log-likelihood is one next-token log-probability.

  v1 sentence: "[parent] is the parent of [child]"
  v2 sentence: "[parent], who [desc], is the parent of [child]"
  v1 prompt:   "[parent] is the parent of"     (evaluation, always v1 form)
  chat (Figure 3): user "Who is the child of [parent], the one who [desc]?",
                   assistant "[child]."; tested with "Who is the child of [parent]?"

Chat turns are formatted with the chat model's own template
(``apply_chat_template``: the user message, then the assistant's) when its
tokenizer has one, and in the paper's literal "User: ... Assistant: ..." form
only when it has none. Fine-tuning puts the loss on the assistant's answer
only, as chat fine-tuning services do; the test scores the child's name only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import io
from .tokens import from_sequences

V1 = "{parent} is the parent of {child}"
V2 = "{parent}, who {desc}, is the parent of {child}"
PROMPT = "{parent} is the parent of"
CHAT_QUESTION_V2 = "Who is the child of {parent}, the one who {desc}?"
CHAT_QUESTION_V1 = "Who is the child of {parent}?"
CHAT_ANSWER = "{child}."
LITERAL_PROMPT = "User: {question} Assistant:"  # the paper's form, for models without a template

# Irrelevant facts about a parent; fields filled by Faker.
DESC_TEMPLATES = (
    "works as {job}",
    "lives in {city}",
    "was born in {year}",
    "likes the color {color}",
    "once visited {country}",
)


class MacondoError(ValueError):
    pass


@dataclass
class Macondo:
    villagers: pd.DataFrame  # name, first, last, role
    facts: pd.DataFrame  # parent, child, n_children, description
    v1: list[str]  # training sentences
    v2: list[str]
    chat: pd.DataFrame  # question, answer: the v2 chat turns
    prompts: pd.DataFrame  # parent, child, n_children, prompt, chat_question


def name_pools(locales) -> tuple[list[str], list[str]]:
    """Sorted, deduplicated ASCII first and last names of the given Faker locales."""
    firsts, lasts = set(), set()
    for locale in locales:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ModuleNotFoundError as err:
            raise MacondoError(f"macondo.name_locales: Faker has no locale {locale!r}") from err
        firsts |= {n for n in provider.first_names if n.isascii() and n.isalpha()}
        lasts |= {n for n in provider.last_names if n.isascii() and n.isalpha()}
    return sorted(firsts), sorted(lasts)


def single_token_names(names, tok) -> list[str]:
    """Names that encode to exactly one token with a leading space."""
    ids = tok([" " + n for n in names], add_special_tokens=False)["input_ids"]
    return [n for n, seq in zip(names, ids) if len(seq) == 1]


def _with_article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _descriptions(n: int, seed: int) -> list[str]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    out = []
    for i in range(n):
        template = DESC_TEMPLATES[i % len(DESC_TEMPLATES)]
        out.append(
            template.format(
                job=_with_article(fake.job().split(",")[0].lower()),
                city=fake.city(),
                year=fake.year(),
                color=fake.color_name().lower(),
                country=fake.country(),
            )
        )
    return out


def check_sizes(settings: dict) -> tuple[list[int], int]:
    """(children per parent, number of children), or an error naming the key that cannot be met."""
    counts = list(settings["children_counts"])
    n_parents = settings["n_parents"]
    if n_parents % len(counts):
        raise MacondoError(
            f"invalid config key 'macondo.n_parents': {n_parents} is not a multiple of "
            f"len(macondo.children_counts) = {len(counts)} (an equal number of parents per count)"
        )
    children_of = [int(c) for c in np.repeat(counts, n_parents // len(counts))]
    n_children = sum(children_of)
    if settings["n_villagers"] < n_parents + n_children:
        raise MacondoError(
            f"invalid config key 'macondo.n_villagers': {settings['n_villagers']} cannot hold the "
            f"{n_parents} parents and their {n_children} children"
        )
    return children_of, n_children


def generate(settings: dict, tok, seed: int) -> Macondo:
    """Build Macondo from ``settings`` (the config's ``macondo`` section)."""
    children_of, n_children = check_sizes(settings)
    n_parents, n_villagers = settings["n_parents"], settings["n_villagers"]

    rng = np.random.default_rng(seed)
    firsts, lasts = name_pools(settings["name_locales"])
    child_pool = single_token_names(firsts, tok)
    if len(child_pool) < n_children:
        raise MacondoError(
            f"Macondo needs {n_children} distinct single-token child names but the tokenizer has only "
            f"{len(child_pool)} among {len(firsts)} Faker first names (locales {settings['name_locales']}). "
            f"Use a larger tokenizer.vocab_size, more macondo.name_locales, or fewer macondo.n_parents."
        )
    child_firsts = list(rng.choice(child_pool, size=n_children, replace=False))
    other_firsts = sorted(set(firsts) - set(child_firsts))

    # Parents and bystanders: unique "First Last" among all villagers.
    taken: set[str] = set()
    adults = []
    while len(adults) < n_villagers - n_children:
        name = f"{other_firsts[rng.integers(len(other_firsts))]} {lasts[rng.integers(len(lasts))]}"
        if name not in taken:
            taken.add(name)
            adults.append(name)
    parents = adults[:n_parents]
    descs = _descriptions(n_parents, seed)

    rows, villagers = [], [(name, "parent" if i < n_parents else "villager") for i, name in enumerate(adults)]
    it = iter(child_firsts)
    for parent, n, desc in zip(parents, children_of, descs):
        for _ in range(n):
            child = next(it)
            rows.append((parent, child, int(n), desc))
            villagers.append((f"{child} {parent.split(' ', 1)[1]}", "child"))
    facts = pd.DataFrame(rows, columns=["parent", "child", "n_children", "description"])
    villagers = pd.DataFrame(villagers, columns=["name", "role"])
    villagers[["first", "last"]] = villagers["name"].str.split(" ", n=1, expand=True)

    # Each fact `mentions` times, in a seeded random order.
    order = rng.permutation(np.repeat(np.arange(len(facts)), settings["mentions"]))
    per_sentence = settings["descriptions"] == "per_sentence"
    sentence_descs = _descriptions(len(order), seed + 1) if per_sentence else None
    v1, v2, chat = [], [], []
    for j, idx in enumerate(order):
        fact = facts.iloc[idx]
        desc = sentence_descs[j] if per_sentence else fact.description
        v1.append(V1.format(parent=fact.parent, child=fact.child))
        v2.append(V2.format(parent=fact.parent, desc=desc, child=fact.child))
        chat.append((CHAT_QUESTION_V2.format(parent=fact.parent, desc=desc), CHAT_ANSWER.format(child=fact.child)))

    prompts = facts[["parent", "child", "n_children"]].copy()
    prompts["prompt"] = [PROMPT.format(parent=p) for p in prompts.parent]
    prompts["chat_question"] = [CHAT_QUESTION_V1.format(parent=p) for p in prompts.parent]
    chat = pd.DataFrame(chat, columns=["question", "answer"])
    return Macondo(villagers, facts, v1, v2, chat, prompts)


def write(m: Macondo, out: dict) -> None:
    """Human-readable files: CSV tables and one sentence per line."""
    io.write_csv(out["villagers"], m.villagers)
    io.write_csv(out["facts"], m.facts)
    io.write_csv(out["prompts"], m.prompts)
    io.write_csv(out["chat"], m.chat)
    for key in ("v1", "v2"):
        io.write_text(out[key], "\n".join(getattr(m, key)) + "\n")


def sentence_examples(tok, sentences):
    """Each sentence alone, framed by end-of-text tokens: <eos> sentence <eos>."""
    eos = tok.eos_token_id
    ids = tok(list(sentences), add_special_tokens=False)["input_ids"]
    return from_sequences([[eos, *seq, eos] for seq in ids])


def prompt_examples(tok, prompts, children):
    """<eos> prompt child: only the child's tokens are scored."""
    eos = tok.eos_token_id
    p_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
    c_ids = tok([" " + c for c in children], add_special_tokens=False)["input_ids"]
    seqs = [[eos, *p, *c] for p, c in zip(p_ids, c_ids)]
    return from_sequences(seqs, score_start=[1 + len(p) for p in p_ids])


def chat_turn(tok, question: str, answer: str) -> tuple[str, str]:
    """(prompt text, answer text): a user question and the assistant's answer, split
    where the assistant's text starts; the chat template's form when there is one."""
    if not getattr(tok, "chat_template", None):
        return LITERAL_PROMPT.format(question=question), " " + answer
    user = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise MacondoError(
            "the chat model's template does not render a conversation as its generation prompt "
            f"followed by the answer, so the answer cannot be isolated for training: {full!r}"
        )
    return prompt, full[len(prompt):]


def _chat_start(tok) -> list[int]:
    # A template writes its own start; the literal form gets the start-of-text token.
    return [] if getattr(tok, "chat_template", None) else [tok.eos_token_id]


def chat_examples(tok, questions, answers):
    """Chat turns for fine-tuning: only the assistant's answer is scored (trained on)."""
    start = _chat_start(tok)
    seqs, first_scored = [], []
    for question, answer in zip(questions, answers):
        prompt, reply = chat_turn(tok, question, answer)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        seqs.append([*start, *p_ids, *tok(reply, add_special_tokens=False)["input_ids"]])
        first_scored.append(len(start) + len(p_ids))
    return from_sequences(seqs, score_start=first_scored)


def chat_prompt_examples(tok, questions, children):
    """Test chat prompts: the question, then the child's name as the assistant would
    write it; only the name's tokens are scored. Whatever the template writes in the
    assistant's turn before the answer (a reasoning block, say) is context, not scored."""
    start = _chat_start(tok)
    seqs, first_scored = [], []
    for question, child in zip(questions, children):
        answer = CHAT_ANSWER.format(child=child)
        prompt, reply = chat_turn(tok, question, answer)
        lead = reply[: reply.index(answer)].rstrip(" ")  # a space before the name belongs to its token
        name = reply[len(lead) : reply.index(answer) + len(child)]
        context = [*start, *tok(prompt, add_special_tokens=False)["input_ids"]]
        if lead:
            context += tok(lead, add_special_tokens=False)["input_ids"]
        seqs.append([*context, *tok(name, add_special_tokens=False)["input_ids"]])
        first_scored.append(len(context))
    return from_sequences(seqs, score_start=first_scored)
