"""GPT-2 and its decomposition p_lm(x_t | c) = f(g(enc(c))) (SPEC table).

    enc(c) = embeddings, blocks 0..L-2 and the last block's attention sublayer
             with its residual: the residual stream h before the last MLP
    g(h)   = ln_f(h + mlp(ln_2(h)))   (ln_f(h) when the last MLP is removed)
    f(z)   = softmax(W z), W the tied output embedding

The kNN key of a context is ln_2(enc(c)), the input of the last MLP (Khandelwal
et al.), or enc(c) itself with ``key="residual"``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

KEY_KINDS = ("mlp_input", "residual")


class ModelLoadError(RuntimeError):
    """A model named in the config could not be loaded."""


class ZeroMLP(nn.Module):
    """Stands in for a deleted MLP: the block's residual passes through unchanged."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


class GPT2WithoutLastMLP(GPT2LMHeadModel):
    """GPT-2 whose last block has no MLP, so g(h) = ln_f(h)."""

    def __init__(self, config):
        super().__init__(config)
        self.transformer.h[-1].mlp = ZeroMLP()


def build_gpt2(
    vocab_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    drop_last_mlp: bool = False,
    dropout: float = 0.0,
    eos_token_id: int = 0,
    seed: int = 0,
) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 of the given shape (seeded)."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        drop_last_mlp=drop_last_mlp,
    )
    torch.manual_seed(seed)
    cls = GPT2WithoutLastMLP if drop_last_mlp else GPT2LMHeadModel
    return cls(config)


def best_device() -> torch.device:
    """The GPU when there is one (cluster jobs), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def load_lm(name_or_path: str, config_key: str = "model", device=None):
    """Load a causal LM with ``from_pretrained`` (hub id or local directory).

    Our own no-last-MLP models carry ``drop_last_mlp`` in their config.json and
    come back as GPT2WithoutLastMLP.
    """
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        cls = GPT2WithoutLastMLP if getattr(config, "drop_last_mlp", False) else AutoModelForCausalLM
        return cls.from_pretrained(name_or_path).to(device or best_device())
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"config key {config_key!r}: cannot load model {name_or_path!r} with "
            f"from_pretrained (no hub access and no local copy?). Point {config_key} "
            f"at a local directory holding the model. Cause: {err}"
        ) from err


def check_context(model, examples, what: str) -> None:
    """Every example must fit the model's context window (its position embeddings)."""
    n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    longest = int(examples.lengths().max()) if len(examples) else 0
    if n_positions is not None and longest > n_positions:
        raise ValueError(
            f"{what}: an example has {longest} tokens but the model's context holds {n_positions} "
            f"(raise corpus.block_size for the corpus LM, or shorten the examples)"
        )


def last_block(model):
    return model.transformer.h[-1]


@contextmanager
def capture_enc(model):
    """Record h = enc(c), the input of the last block's ln_2, during a forward pass."""
    seen = {}

    def pre_hook(_module, args):
        seen["h"] = args[0]

    handle = last_block(model).ln_2.register_forward_pre_hook(pre_hook)
    try:
        yield seen
    finally:
        handle.remove()


def enc(model, input_ids: torch.Tensor) -> torch.Tensor:
    """h = enc(c) at every position of `input_ids` (B, T) -> (B, T, d)."""
    with capture_enc(model) as seen:
        model.transformer(input_ids=input_ids)
    return seen["h"]


def g(model, h: torch.Tensor) -> torch.Tensor:
    """z = ln_f(h + mlp(ln_2(h))): the last MLP with its residual, then ln_f."""
    block = last_block(model)
    return model.transformer.ln_f(h + block.mlp(block.ln_2(h)))


def f_logits(model, z: torch.Tensor) -> torch.Tensor:
    """W z: the logits whose softmax is f(z)."""
    return model.lm_head(z)


def f(model, z: torch.Tensor) -> torch.Tensor:
    return torch.softmax(f_logits(model, z), dim=-1)


def knn_key(model, h: torch.Tensor, key: str = "mlp_input") -> torch.Tensor:
    """The datastore key of a context from its h = enc(c)."""
    if key == "mlp_input":
        return last_block(model).ln_2(h)
    if key == "residual":
        return h
    raise ValueError(f"knn key {key!r} is not one of {KEY_KINDS}")


def logits_and_keys(model, input_ids: torch.Tensor, key: str = "mlp_input"):
    """One forward pass giving the LM logits and the kNN keys at every position."""
    with capture_enc(model) as seen:
        logits = model(input_ids=input_ids).logits
    return logits, knn_key(model, seen["h"], key)


def keys_only(model, input_ids: torch.Tensor, key: str = "mlp_input") -> torch.Tensor:
    """kNN keys without computing the vocabulary logits (the datastore's forward)."""
    return knn_key(model, enc(model, input_ids), key)
