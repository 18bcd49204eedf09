"""Model families the decomposition f(g(enc(c))) is defined for (no torch needed).

The workflow checks a config's models against this table before any job runs;
``model.py`` uses it to find each family's parts.

Family      model types                mlp_norm                  final_norm
GPT-2       gpt2                       ln_2 (LayerNorm)          transformer.ln_f
Llama       llama, mistral, qwen2      post_attention_layernorm  model.norm
                                       (RMSNorm, gated MLP)

An architecture whose last layer has no single "residual before the MLP"
(GPT-NeoX runs attention and MLP in parallel) is refused with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

NO_LAST_MLP_SUFFIX = "_no_last_mlp"

# The kNN key kinds (model.knn_key computes each): the one list the schema, the README and
# the tests are checked against. Here, not in model.py, so that planning imports no torch.
KEY_KINDS = ("mlp_input", "enc", "final_hidden")


class UnsupportedArchitecture(ValueError):
    """The decomposition f(g(enc(c))) is not defined for this architecture."""


@dataclass(frozen=True)
class Family:
    """Where a family keeps the parts of the decomposition."""

    name: str
    model_types: tuple[str, ...]
    body: str  # attribute of the causal LM holding the decoder stack
    layers: str  # attribute of the body: the list of decoder layers
    mlp_norm: str  # attribute of a decoder layer: the norm in front of its MLP
    final_norm: str  # attribute of the body: the norm in front of the head


FAMILIES = (
    Family("GPT-2", ("gpt2",), "transformer", "h", "ln_2", "ln_f"),
    Family("Llama", ("llama", "mistral", "qwen2"), "model", "layers", "post_attention_layernorm", "norm"),
)


def supported() -> str:
    return "; ".join(f"{fam.name} ({', '.join(fam.model_types)})" for fam in FAMILIES)


def no_last_mlp_type(model_type: str) -> str:
    """The model type a model of `model_type` is saved under once its last MLP is removed."""
    return f"knnlm_{model_type}{NO_LAST_MLP_SUFFIX}"


def base_model_type(model_type: str) -> str:
    return model_type.removeprefix("knnlm_").removesuffix(NO_LAST_MLP_SUFFIX)


def family_of(model_type: str, what: str = "model") -> Family:
    """The family of a config's model_type, or a clear error naming it and the supported ones."""
    base = base_model_type(model_type)
    for fam in FAMILIES:
        if base in fam.model_types:
            return fam
    raise UnsupportedArchitecture(
        f"{what}: architecture {model_type!r} is not supported by the decomposition f(g(enc(c))): "
        f"it needs the residual stream before the last MLP as one tensor. Supported families: {supported()}."
    )


def local_model_type(path) -> str | None:
    """The model_type in a local model folder's config.json (None if it is not a local folder)."""
    config = Path(path) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None
