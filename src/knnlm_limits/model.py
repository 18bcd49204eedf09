"""Causal LMs and the paper's decomposition p_lm(x_t | c) = f(g(enc(c))) (SPEC table).

One definition for every supported family (``families.py``: GPT-2; Llama,
Mistral, Qwen2), in terms of parts of the last decoder layer and the head:

    enc(c) = everything up to the last layer's MLP: the residual stream h
             entering the last MLP sublayer
    g(h)   = final_norm(h + mlp(mlp_norm(h)))   (final_norm(h) without the last MLP)
    f(z)   = softmax(lm_head(z))                (tied or untied head)
    key    = mlp_norm(enc(c)) (the last MLP's input, Khandelwal et al.),
             or enc(c) itself ("enc"), or g(enc(c)) ("final_hidden")

A model without its last MLP is saved under a model type of its own
(``knnlm_<type>_no_last_mlp``), registered with the transformers Auto classes
when this module is imported: stock ``AutoModelForCausalLM.from_pretrained``
without this package refuses it instead of silently growing a random MLP.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .families import KEY_KINDS, NO_LAST_MLP_SUFFIX, UnsupportedArchitecture, family_of, no_last_mlp_type


class ModelLoadError(RuntimeError):
    """A model named in the config could not be loaded."""


# ---------------------------------------------------------------- no last MLP


class ZeroMLP(nn.Module):
    """Stands in for a deleted MLP: the block's residual passes through unchanged."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


# architecture name -> (config class, causal LM class), for models built here
ARCHITECTURES = {
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def _without_last_mlp(arch: str, config_cls, model_cls):
    """A config class with a model type of its own, and a model class whose last MLP is gone."""
    model_type = no_last_mlp_type(arch)
    config = type(f"{config_cls.__name__}NoLastMLP", (config_cls,), {"model_type": model_type})
    fam = family_of(arch)

    def __init__(self, cfg):
        model_cls.__init__(self, cfg)
        layers = getattr(getattr(self, fam.body), fam.layers)
        layers[-1].mlp = ZeroMLP()

    model = type(f"{model_cls.__name__}NoLastMLP", (model_cls,), {"config_class": config, "__init__": __init__})
    AutoConfig.register(model_type, config, exist_ok=True)
    AutoModelForCausalLM.register(config, model, exist_ok=True)
    return config, model


NO_LAST_MLP = {arch: _without_last_mlp(arch, *classes) for arch, classes in ARCHITECTURES.items()}


def drops_last_mlp(config) -> bool:
    return config.model_type.endswith(NO_LAST_MLP_SUFFIX)


# ---------------------------------------------------------------- building and loading


def mlp_width(n_embd: int, architecture: str) -> int:
    """GPT-2's MLP is 4d wide with two matrices; a gated MLP has three, so 8d/3 matches
    its parameter count (rounded up to a multiple of 8)."""
    if architecture == "gpt2":
        return 4 * n_embd
    return -(-8 * n_embd // 3 // 8) * 8


def build_model(
    vocab_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    architecture: str = "gpt2",
    drop_last_mlp: bool = False,
    dropout: float = 0.0,
    eos_token_id: int = 0,
    tie_word_embeddings: bool = True,
    seed: int = 0,
):
    """A randomly initialised causal LM of the given architecture and shape (seeded)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}")
    config_cls, model_cls = NO_LAST_MLP[architecture] if drop_last_mlp else ARCHITECTURES[architecture]
    common = dict(vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                  tie_word_embeddings=tie_word_embeddings)
    if architecture == "gpt2":
        config = config_cls(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **common)
    else:
        # The Llama family has attention dropout only.
        config = config_cls(hidden_size=n_embd, intermediate_size=mlp_width(n_embd, architecture),
                            num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
                            max_position_embeddings=n_positions, attention_dropout=dropout, **common)
    torch.manual_seed(seed)
    return model_cls(config)


def best_device() -> torch.device:
    """The GPU when there is one (cluster jobs), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def load_lm(name_or_path: str, config_key: str = "model", device=None):
    """Load a causal LM with ``from_pretrained`` (hub id or local directory), in float32.

    float32 whatever the checkpoint's dtype: training keeps float32 master
    weights (a bf16 AdamW update at lr 1e-5 is mostly lost to rounding), and the
    decomposition's checks hold to float tolerance. GPUs use bf16 autocast.
    """
    try:
        lm = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"config key {config_key!r}: cannot load model {name_or_path!r} with "
            f"from_pretrained (no hub access and no local copy?). Point {config_key} "
            f"at a local directory holding the model. Cause: {err}"
        ) from err
    return lm.to(device or best_device())


def context_size(model) -> int | None:
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)


def check_context(model, examples, what: str) -> None:
    """Every example must fit the model's context window (its position embeddings)."""
    n_positions = context_size(model)
    longest = int(examples.lengths().max()) if len(examples) else 0
    if n_positions is not None and longest > n_positions:
        raise ValueError(
            f"{what}: an example has {longest} tokens but the model's context holds {n_positions} "
            f"(raise corpus.block_size for the corpus LM, or shorten the examples)"
        )


# ---------------------------------------------------------------- the decomposition


@dataclass
class Parts:
    body: nn.Module  # the decoder stack without the head (its output is g(enc(c)))
    mlp_norm: nn.Module
    mlp: nn.Module
    final_norm: nn.Module
    lm_head: nn.Module


def parts(model) -> Parts:
    fam = family_of(model.config.model_type)
    body = getattr(model, fam.body)
    last = getattr(body, fam.layers)[-1]
    return Parts(body, getattr(last, fam.mlp_norm), last.mlp, getattr(body, fam.final_norm), model.lm_head)


@contextmanager
def capture_enc(model):
    """Record h = enc(c) and mlp_norm(h), the input and output of the last MLP's norm."""
    seen = {}

    def hook(_module, args, output):
        seen["h"], seen["mlp_input"] = args[0], output

    handle = parts(model).mlp_norm.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def enc(model, input_ids: torch.Tensor) -> torch.Tensor:
    """h = enc(c) at every position of `input_ids` (B, T) -> (B, T, d)."""
    with capture_enc(model) as seen:
        parts(model).body(input_ids=input_ids)
    return seen["h"]


def g(model, h: torch.Tensor) -> torch.Tensor:
    """z = final_norm(h + mlp(mlp_norm(h))): the last MLP with its residual, then the final norm."""
    p = parts(model)
    return p.final_norm(h + p.mlp(p.mlp_norm(h)))


def f_logits(model, z: torch.Tensor) -> torch.Tensor:
    """lm_head(z): the logits whose softmax is f(z)."""
    return model.lm_head(z)


def f(model, z: torch.Tensor) -> torch.Tensor:
    return torch.softmax(f_logits(model, z), dim=-1)


def knn_key(model, h: torch.Tensor, key: str = "mlp_input") -> torch.Tensor:
    """The datastore key of a context from its h = enc(c)."""
    if key == "mlp_input":
        return parts(model).mlp_norm(h)
    if key == "enc":
        return h
    if key == "final_hidden":
        return g(model, h)
    raise ValueError(f"knn key {key!r} is not one of {KEY_KINDS}")


def _key_of(model, seen: dict, key: str) -> torch.Tensor:
    # the captured norm output is exactly what the last MLP reads
    return seen["mlp_input"] if key == "mlp_input" else knn_key(model, seen["h"], key)


def logits_and_keys(model, input_ids: torch.Tensor, key: str | None = "mlp_input"):
    """One forward pass giving the LM logits and the kNN keys at every position.

    ``key=None``: logits only, with no hook, so any causal LM works (LM-only scoring).
    """
    if key is None:
        return model(input_ids=input_ids).logits, None
    with capture_enc(model) as seen:
        logits = model(input_ids=input_ids).logits
    return logits, _key_of(model, seen, key)


# Config fields of models whose logits are not lm_head(z) alone (Gemma 2, Cohere, Granite).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def head_split(model):
    """(body, lm_head) when the logits are exactly lm_head(body(ids).last_hidden_state), a
    linear map without bias (every supported family); None for any other causal LM."""
    try:
        p = parts(model)
    except UnsupportedArchitecture:
        return None
    plain = isinstance(p.lm_head, nn.Linear) and p.lm_head.bias is None
    transformed = any(getattr(model.config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    return (p.body, p.lm_head) if plain and not transformed else None


def logits_and_keys_at(model, input_ids: torch.Tensor, at: torch.Tensor, key: str | None = "mlp_input"):
    """LM logits (N, V) and kNN keys (N, d) at the N positions where `at` (B, T) is true.

    A model of a supported family runs its head at those positions only: scoring
    the answer tokens of many prompts then builds no (B, T, V) logits. Any other
    causal LM (``key=None``) is scored from its full logits.
    """
    split = head_split(model)
    if split is None:
        logits, keys = logits_and_keys(model, input_ids, key)
        return logits[at], None if keys is None else keys[at]
    body, head = split
    if key is None:
        return head(body(input_ids=input_ids, use_cache=False).last_hidden_state[at]), None
    with capture_enc(model) as seen:
        z = body(input_ids=input_ids, use_cache=False).last_hidden_state
    return head(z[at]), _key_of(model, seen, key)[at]


def keys_only(model, input_ids: torch.Tensor, key: str = "mlp_input") -> torch.Tensor:
    """kNN keys without computing the vocabulary logits (the datastore's forward)."""
    with capture_enc(model) as seen:
        parts(model).body(input_ids=input_ids)
    return _key_of(model, seen, key)
