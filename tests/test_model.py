"""The decomposition p_lm = f(g(enc(c))) against the model's own forward pass."""

import pytest
import torch

from knnlm_limits import model as M


@pytest.fixture(params=[False, True], ids=["full", "no_last_mlp"])
def lm(request):
    return M.build_gpt2(vocab_size=500, n_layer=3, n_embd=48, n_head=4, n_positions=32,
                        drop_last_mlp=request.param, seed=3).eval()


def test_f_g_enc_equals_softmax(lm):
    ids = torch.randint(0, 500, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.softmax(lm(input_ids=ids).logits, -1)
        got = M.f(lm, M.g(lm, M.enc(lm, ids)))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_no_last_mlp_means_g_is_ln_f():
    lm = M.build_gpt2(500, 2, 32, 2, 16, drop_last_mlp=True, seed=0).eval()
    h = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(M.g(lm, h), lm.transformer.ln_f(h))
    assert not any(".h.1.mlp." in name for name, _ in lm.named_parameters())


def test_keys_are_ln2_of_enc(lm):
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        h = M.enc(lm, ids)
        logits, keys = M.logits_and_keys(lm, ids, "mlp_input")
        torch.testing.assert_close(keys, M.last_block(lm).ln_2(h))
        torch.testing.assert_close(M.keys_only(lm, ids, "residual"), h)
        torch.testing.assert_close(logits, lm(input_ids=ids).logits)


def test_save_and_load_roundtrip(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = M.load_lm(str(tmp_path)).eval()
    assert type(again) is type(lm)
    ids = torch.randint(0, 500, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_missing_model_error_names_key_and_id():
    with pytest.raises(M.ModelLoadError, match=r"overspecification\.base_model.*no-such-org/no-such-model"):
        M.load_lm("no-such-org/no-such-model", config_key="overspecification.base_model")


def test_bad_key_kind():
    lm = M.build_gpt2(100, 1, 16, 2, 8)
    with pytest.raises(ValueError, match="knn key"):
        M.keys_only(lm, torch.zeros(1, 3, dtype=torch.long), "nonsense")
