"""Parity with PyTorch `transformers` on tiny random configs of every supported architecture:
logits (max abs difference <= 1e-4 in float32, left-padded batch), greedy continuations, and
the export round trip (our params -> HF folder -> transformers and back)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

from llm import checkpoints  # noqa: E402
from modeseek import decoder as dec  # noqa: E402
from modeseek import sampler  # noqa: E402

V = 128
COMMON = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=96, max_position_embeddings=128, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
ARCHS = {
    "llama_gqa": ("LlamaConfig", dict(num_key_value_heads=2, rope_theta=5000.0)),
    "smollm_tied_mqa": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True,
                                            rope_theta=100000.0)),
    "llama_bias": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "mistral_window": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2_bias": ("Qwen2Config", dict(num_key_value_heads=2, rope_theta=1e6)),
    "pythia": ("GPTNeoXConfig", dict(rotary_pct=0.25, use_parallel_residual=True,
                                     intermediate_size=256)),
    "neox_sequential": ("GPTNeoXConfig", dict(rotary_pct=0.5, use_parallel_residual=False,
                                              hidden_act="gelu_new")),
}
forward = jax.jit(dec.forward, static_argnums=1)


def _hf_model(arch):
    config_cls, extra = ARCHS[arch]
    hf_config = getattr(transformers, config_cls)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():  # HF inits biases to 0 and norms to 1: randomise everything
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.generation_config.eos_token_id = None
    return model.eval().float()


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, V, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    tokens[mask == 0] = 0
    return tokens, mask


def _hf_logits(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    return out.logits.numpy()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_greedy_and_export_round_trip(arch, tmp_path):
    model = _hf_model(arch)
    model.save_pretrained(tmp_path / "hf")
    config, params, _ = checkpoints.load_hf(str(tmp_path / "hf"))
    tokens, mask = _batch()
    valid = mask.astype(bool)

    ours = np.asarray(forward(params, config, tokens, attention_mask_BxL=mask))
    theirs = _hf_logits(model, tokens, mask)
    assert np.abs(ours[valid] - theirs[valid]).max() <= 1e-4
    assert np.abs(theirs[valid]).std() > 0.3  # logits far from uniform: the check has teeth

    steps = 8
    with torch.no_grad():
        hf_out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                                attention_mask=torch.tensor(mask), max_new_tokens=steps,
                                do_sample=False, pad_token_id=0)
    out = sampler.sample(jax.random.key(0), params, config, tokens, mask, max_new_tokens=steps,
                         temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.response_tokens), hf_out[:, -steps:].numpy())

    checkpoints.save_hf(str(tmp_path / "export"), config, params)
    reloaded_hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "export", attn_implementation="eager").eval()
    assert type(reloaded_hf) is type(model)
    assert np.abs(_hf_logits(reloaded_hf, tokens, mask)[valid] - ours[valid]).max() <= 1e-4
    config2, params2, _ = checkpoints.load_hf(str(tmp_path / "export"))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)
