"""The decomposition p_lm = f(g(enc(c))) against each family's own forward pass.

The expected tensors come from forward hooks the tests place themselves, by
each family's module names, not from the code under test.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from knnlm_limits import model as M
from knnlm_limits.families import UnsupportedArchitecture, family_of
from tests.support import ROOT

# The modules each family's decomposition must read, named independently of families.py.
MLP_NORM = {"gpt2": lambda lm: lm.transformer.h[-1].ln_2,
            "llama": lambda lm: lm.model.layers[-1].post_attention_layernorm}
FINAL_NORM = {"gpt2": lambda lm: lm.transformer.ln_f, "llama": lambda lm: lm.model.norm}
KIND = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama"}

CASES = [(arch, drop, tied) for arch in ("gpt2", "llama", "mistral", "qwen2")
         for drop in (False, True) for tied in (True, False)]
IDS = [f"{a}-{'no_last_mlp' if d else 'full'}-{'tied' if t else 'untied'}" for a, d, t in CASES]


def tiny(arch, drop=False, tied=True, seed=3):
    return M.build_model(vocab_size=300, n_layer=3, n_embd=48, n_head=4, n_positions=32, architecture=arch,
                         drop_last_mlp=drop, tie_word_embeddings=tied, seed=seed).eval()


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    arch, drop, tied = request.param
    return arch, tiny(arch, drop, tied)


def _hooked(lm, module, ids):
    """(input, output) of `module` during the model's own forward pass."""
    seen = {}
    handle = module.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0], out=out))
    with torch.no_grad():
        logits = lm(input_ids=ids).logits
    handle.remove()
    return seen["inp"], seen["out"], logits


IDS_IN = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(0))


def test_f_g_enc_equals_the_models_softmax(case):
    _, lm = case
    with torch.no_grad():
        expected = torch.softmax(lm(input_ids=IDS_IN).logits, -1)
        got = M.f(lm, M.g(lm, M.enc(lm, IDS_IN)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_keys_are_exactly_the_hooked_tensors(case):
    arch, lm = case
    h, mlp_input, logits = _hooked(lm, MLP_NORM[KIND[arch]](lm), IDS_IN)
    _, final_hidden, _ = _hooked(lm, FINAL_NORM[KIND[arch]](lm), IDS_IN)
    with torch.no_grad():
        got_logits, key = M.logits_and_keys(lm, IDS_IN, "mlp_input")
        assert torch.equal(key, mlp_input)  # exactly the tensor the last MLP's norm produced
        assert torch.equal(got_logits, logits)
        assert torch.equal(M.keys_only(lm, IDS_IN, "mlp_input"), mlp_input)
        assert torch.equal(M.keys_only(lm, IDS_IN, "enc"), h)
        assert torch.equal(M.enc(lm, IDS_IN), h)
        torch.testing.assert_close(M.keys_only(lm, IDS_IN, "final_hidden"), final_hidden, atol=1e-6, rtol=0)


def test_logits_and_keys_at_positions_are_the_full_tensors_rows(case):
    """The head at the selected positions only gives the rows of the model's own logits."""
    arch, lm = case
    at = torch.rand(IDS_IN.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    _, mlp_input, logits = _hooked(lm, MLP_NORM[KIND[arch]](lm), IDS_IN)
    assert M.head_split(lm) is not None
    with torch.no_grad():
        got_logits, key = M.logits_and_keys_at(lm, IDS_IN, at, "mlp_input")
        lm_only, no_key = M.logits_and_keys_at(lm, IDS_IN, at, None)
    torch.testing.assert_close(got_logits, logits[at], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lm_only, logits[at], atol=1e-5, rtol=1e-5)
    assert torch.equal(key, mlp_input[at]) and no_key is None


def test_logit_scaling_config_leaves_the_head_split():
    """A config that scales or caps the logits (a family added later) gets the full-logits path."""
    lm = tiny("llama")
    lm.config.final_logit_softcapping = 30.0
    assert M.head_split(lm) is None


def test_logits_at_positions_of_any_causal_lm():
    """A model outside the families (GPT-NeoX) is scored from its full logits."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    lm = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=32)).eval()
    at = torch.rand(IDS_IN.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    assert M.head_split(lm) is None
    with torch.no_grad():
        got, key = M.logits_and_keys_at(lm, IDS_IN, at, None)
        assert torch.equal(got, lm(input_ids=IDS_IN).logits[at]) and key is None


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen2"])
def test_without_last_mlp_g_is_the_final_norm(arch):
    lm = tiny(arch, drop=True)
    assert M.drops_last_mlp(lm.config)
    h = torch.randn(2, 5, 48)
    with torch.no_grad():
        torch.testing.assert_close(M.g(lm, h), FINAL_NORM[KIND[arch]](lm)(h))
    last = lm.config.num_hidden_layers - 1
    assert not any(f".{last}.mlp." in name for name, _ in lm.named_parameters())
    assert any(".0.mlp." in name for name, _ in lm.named_parameters())


def test_untied_head_is_its_own_matrix():
    untied, tied = tiny("llama", tied=False), tiny("llama", tied=True)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_save_and_load_roundtrip_keeps_the_variant(case, tmp_path):
    _, lm = case
    lm.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = M.load_lm(str(tmp_path)).eval()
    assert type(again) is type(lm)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS_IN).logits, lm(input_ids=IDS_IN).logits)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_stock_from_pretrained_cannot_grow_a_random_mlp(arch, tmp_path):
    """Without this package, AutoModelForCausalLM refuses a no-last-MLP checkpoint; with it
    (the types registered), the model comes back without its MLP and with identical logits."""
    lm = tiny(arch, drop=True)
    lm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == f"knnlm_{arch}_no_last_mlp"
    stock = "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(%r)" % str(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", stock], capture_output=True, text=True, cwd="/", env=env)
    assert proc.returncode != 0
    assert f"knnlm_{arch}_no_last_mlp" in proc.stderr and "does not recognize this architecture" in proc.stderr

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert M.drops_last_mlp(loaded.config) and isinstance(M.parts(loaded).mlp, M.ZeroMLP)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS_IN).logits, lm(input_ids=IDS_IN).logits)


def test_unsupported_architecture_names_it_and_the_families():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedArchitecture, match=r"'gpt_neox'.*GPT-2 \(gpt2\); Llama \(llama, mistral, qwen2\)"):
        M.enc(neox, torch.zeros(1, 4, dtype=torch.long))
    assert family_of("knnlm_qwen2_no_last_mlp").name == "Llama"


def test_bf16_checkpoint_loads_in_float32(tmp_path):
    lm = tiny("qwen2")
    lm.to(torch.bfloat16).save_pretrained(tmp_path)
    again = M.load_lm(str(tmp_path))
    assert all(p.dtype == torch.float32 for p in again.parameters())


def test_missing_model_error_names_key_and_id():
    with pytest.raises(M.ModelLoadError, match=r"overspecification\.base_model.*no-such-org/no-such-model"):
        M.load_lm("no-such-org/no-such-model", config_key="overspecification.base_model")


def test_bad_key_kind():
    with pytest.raises(ValueError, match="knn key"):
        M.keys_only(tiny("gpt2"), torch.zeros(1, 3, dtype=torch.long), "nonsense")


def test_rehearsal_models_load_and_decompose(tmp_path):
    """The tiny local 'hub' models of the rehearsal: each loads with from_pretrained, in
    float32, and the corpus LMs decompose exactly."""
    from knnlm_limits import rehearsal
    from knnlm_limits.tokenizer import vocabulary

    out = rehearsal.make(tmp_path)
    for name in ("gpt2-lm", "llama-lm"):
        lm = M.load_lm(str(out / name)).eval()
        ids = torch.randint(0, 2000, (2, 9))
        with torch.no_grad():
            torch.testing.assert_close(M.f(lm, M.g(lm, M.enc(lm, ids))), torch.softmax(lm(input_ids=ids).logits, -1),
                                       atol=1e-5, rtol=0)
        assert vocabulary(out / name) == vocabulary(out / "tokenizer")
    chat = M.load_lm(str(out / "qwen2-chat"))
    assert chat.config.model_type == "qwen2" and json.loads((out / "qwen2-chat" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (ROOT / "config" / "rehearsal.yaml").is_file()
