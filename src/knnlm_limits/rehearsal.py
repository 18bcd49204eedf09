"""Tiny local stand-ins for the paper scale's hub models, made from random weights.

``python -m knnlm_limits.rehearsal [folder]`` (``make rehearsal-models``) writes,
each loadable with ``from_pretrained`` exactly as a hub id is at paper scale:

    tokenizer/   a byte-level BPE trained on synthetic text: the "pretrained"
                 tokenizer of config/rehearsal.yaml (tokenizer.pretrained)
    gpt2-lm/     a GPT-2-architecture LM with that tokenizer (a corpus LM and
                 Figure 2's base model)
    llama-lm/    a Llama-architecture LM, untied head, saved in bfloat16 as hub
                 models are (a corpus LM)
    qwen2-chat/  a Qwen2-architecture chat model, bfloat16, whose tokenizer adds
                 ChatML turn tokens and a chat template (Figure 3's chat model)

Nothing is downloaded; everything is seeded, so the folder is the same on
every machine. It is small (a few MB) and not committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import corpus, io, model, tokenizer

VOCAB_SIZE = 2048
SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 4}
CONTEXT = 256
# ChatML: each turn is <|im_start|>role\ncontent<|im_end|>\n; the generation prompt opens
# the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _save(lm, tok, folder: Path, dtype=torch.float32) -> None:
    with io.atomic_path(folder) as tmp:
        lm.to(dtype).save_pretrained(tmp)
        tok.save_pretrained(tmp)


def make(out_dir) -> Path:
    out = Path(out_dir)
    tok = tokenizer.train_bpe(corpus.synthetic_lines(3000, seed=[99, 0]), VOCAB_SIZE)
    with io.atomic_path(out / "tokenizer") as tmp:
        tok.save_pretrained(tmp)

    def build(architecture, vocab_size, eos, seed, tied=True):
        return model.build_model(vocab_size=vocab_size, n_positions=CONTEXT, architecture=architecture,
                                 eos_token_id=eos, tie_word_embeddings=tied, seed=seed, **SHAPE)

    _save(build("gpt2", len(tok), tok.eos_token_id, seed=1), tok, out / "gpt2-lm")
    _save(build("llama", len(tok), tok.eos_token_id, seed=2, tied=False), tok, out / "llama-lm", torch.bfloat16)

    chat_tok = tokenizer.train_bpe(corpus.synthetic_lines(3000, seed=[99, 0]), VOCAB_SIZE)
    chat_tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat_tok.chat_template = CHAT_TEMPLATE
    end_of_turn = chat_tok.convert_tokens_to_ids("<|im_end|>")
    _save(build("qwen2", len(chat_tok), end_of_turn, seed=3), chat_tok, out / "qwen2-chat", torch.bfloat16)
    return out


if __name__ == "__main__":
    folder = make(sys.argv[1] if len(sys.argv) > 1 else "rehearsal")
    print(f"rehearsal models in {folder}/: {', '.join(sorted(p.name for p in folder.iterdir()))}")
