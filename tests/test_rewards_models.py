"""Reward-model checkpoints as rewards: Hugging Face `*ForSequenceClassification` folders score
like transformers (≤ 1e-4, right- and left-padded batches, transformers' last-non-pad pooling),
and the project's own Bradley–Terry stage output scores like calling the scalar model."""

import functools
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch: pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

import modeseek  # noqa: E402
from configs import llm as llm_configs  # noqa: E402
from llm import checkpointing, reward_models, rewards  # noqa: E402
from llm.byte_tokenizer import VOCAB_SIZE  # noqa: E402
from llm.safetensors_io import CheckpointError, read_safetensors, write_safetensors  # noqa: E402
from modeseek import decoder as dec  # noqa: E402

V, PAD = 128, 0
COMMON = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=96, max_position_embeddings=128, bos_token_id=1,
              eos_token_id=2, pad_token_id=PAD, num_labels=1)
ARCHS = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, rope_theta=5000.0)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, rope_theta=1e6)),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.25, intermediate_size=256)),
}


def hf_reward_model(arch, path):
    config_cls, extra = ARCHS[arch]
    hf_config = getattr(transformers, config_cls)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        hf_config, attn_implementation="eager")
    with torch.no_grad():  # HF inits biases to 0 and norms to 1: randomise everything
        for name, p in model.named_parameters():
            scale = 1.0 if name.startswith("score") else 0.2
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    model = model.eval().float()
    assert type(model).__name__.endswith("ForSequenceClassification")
    model.save_pretrained(path)  # safetensors
    return model


def hf_scores(model, tokens, mask, *, positions=False):
    kwargs = {}
    if positions:  # transformers' default is arange: it shifts left-padded rows
        kwargs["position_ids"] = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask), **kwargs)
    return out.logits[:, 0].numpy()


def padded_batch(side):
    rng = np.random.default_rng(1)
    lengths = [12, 8, 3, 10]
    tokens = np.full((4, 12), PAD, np.int32)
    mask = np.zeros((4, 12), np.int32)
    for i, n in enumerate(lengths):
        span = slice(0, n) if side == "right" else slice(12 - n, 12)
        tokens[i, span] = rng.integers(3, V, n)
        mask[i, span] = 1
    return tokens, mask


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hf_sequence_classification_scores_like_transformers(arch, tmp_path):
    model = hf_reward_model(arch, tmp_path / "rm")
    reward = rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm"), name="rm"))
    assert (reward.kind, reward.name, reward.needs_text) == ("hf_model", "rm", False)
    score = jax.jit(reward.score_fn)
    right, right_mask = padded_batch("right")
    theirs = hf_scores(model, right, right_mask)
    assert theirs.std() > 0.3  # scores far apart: the check has teeth
    ours = np.asarray(score(reward.params, right, right_mask))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    left, left_mask = padded_batch("left")
    ours = np.asarray(score(reward.params, left, left_mask))
    np.testing.assert_allclose(ours, hf_scores(model, left, left_mask, positions=True),
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)  # padding never matters


def test_hf_reward_model_in_bfloat16(tmp_path):
    model = hf_reward_model("qwen2", tmp_path / "rm")
    reward = rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm"),
                                       dtype="bfloat16"))
    assert {str(x.dtype) for x in jax.tree.leaves(reward.params["decoder"])} == {"bfloat16"}
    tokens, mask = padded_batch("right")
    theirs = hf_scores(model, tokens, mask)
    ours = np.asarray(jax.jit(reward.score_fn)(reward.params, tokens, mask))
    np.testing.assert_allclose(ours, theirs, atol=0.05 * np.abs(theirs).max(), rtol=0)


def test_hf_reward_on_prompt_and_response_rows_with_a_trailing_pad_id_token(tmp_path):
    """RewardInputs rows are [left pad | prompt | response | right pad]; a response that ends in
    a token equal to pad_token_id (EOS = pad, common in Llama/Qwen2 RMs) is read one token
    earlier, as transformers does."""
    model = hf_reward_model("llama", tmp_path / "rm")
    reward = rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm")))
    rng = np.random.default_rng(2)
    prompt_tokens = rng.integers(3, V, (2, 5)).astype(np.int32)
    prompt_mask = np.ones((2, 5), bool)
    prompt_mask[1, :3] = False
    response_tokens = rng.integers(3, V, (2, 3, 6)).astype(np.int32)
    response_mask = np.ones((2, 3, 6), bool)
    response_mask[0, 1, 4:] = False
    response_mask[1, 2, 2:] = False
    response_tokens[0, 0, 5] = PAD  # inside the mask: transformers skips it when pooling
    inputs = rewards.RewardInputs(prompt_tokens, prompt_mask, response_tokens, response_mask)
    got = reward(inputs)
    rows = np.concatenate([np.repeat(prompt_tokens, 3, 0), response_tokens.reshape(6, 6)], 1)
    mask = np.concatenate([np.repeat(prompt_mask, 3, 0), response_mask.reshape(6, 6)], 1)
    expected = hf_scores(model, np.where(mask, rows, PAD), mask.astype(np.int32),
                         positions=True).reshape(2, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    index = np.asarray(modeseek.pooling_index(mask, np.where(mask, rows, PAD), PAD))
    np.testing.assert_array_equal(index, [9, 8, 10, 10, 10, 6])
    assert got.shape == (2, 3) and got.dtype == np.float32 and reward.last_seconds > 0


def test_hf_reward_model_bad_folders_name_the_file(tmp_path):
    hf_reward_model("qwen2", tmp_path / "rm")
    tensors = {k: np.array(v) for k, v in  # copies: the file is rewritten below
               read_safetensors(str(tmp_path / "rm" / "model.safetensors")).items()}
    head = tensors.pop("score.weight")
    write_safetensors(str(tmp_path / "rm" / "model.safetensors"), tensors)
    with pytest.raises(CheckpointError, match="rm: missing tensor score.weight"):
        rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm")))
    tensors["score.weight"] = np.concatenate([head, head])
    write_safetensors(str(tmp_path / "rm" / "model.safetensors"), tensors)
    with pytest.raises(CheckpointError, match=re.escape("shape (2, 64), expected (1, 64)")):
        rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm")))
    (tmp_path / "rm" / "model.safetensors").unlink()
    (tmp_path / "rm" / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="only pickle-based weights found"):
        rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm")))


# ----------------------------------------------------------------------------- own BT model


def write_reward_stage(workdir, *, trunk_layers):
    """What a run leaves behind: <workdir>/config.json and <workdir>/reward_model/params."""
    cfg = llm_configs.get_config("tiny")
    cfg.stages.reward_model.trunk_layers = trunk_layers
    workdir.mkdir()
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    config = dec.DecoderConfig.tiny(vocab_size=VOCAB_SIZE, max_len=1024,
                                    num_layers=trunk_layers or 2)
    # init_scalar_model's tree, filled with random values (compiling the init takes seconds)
    shapes = jax.eval_shape(functools.partial(dec.init_scalar_model, config=config),
                            jax.random.key(3))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
    checkpointing.save_params(str(workdir / "reward_model" / "params"), params)
    return config, params


def test_own_reward_model_stage_scores_like_the_scalar_model(tmp_path):
    config, params = write_reward_stage(tmp_path / "run", trunk_layers=1)
    reward = rewards.build_reward(dict(kind="model", path=str(tmp_path / "run" /
                                                                "reward_model")))
    assert reward.kind == "model" and not reward.needs_text
    jax.tree.map(np.testing.assert_array_equal, reward.params, params)
    rng = np.random.default_rng(4)
    prompt_tokens = rng.integers(0, 256, (2, 4)).astype(np.int32)
    prompt_mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]], bool)
    response_tokens = rng.integers(0, 256, (2, 2, 5)).astype(np.int32)
    response_mask = np.ones((2, 2, 5), bool)
    response_mask[1, 0, 3:] = False
    inputs = rewards.RewardInputs(prompt_tokens, prompt_mask, response_tokens, response_mask)
    got = reward(inputs)
    rows = np.concatenate([np.repeat(prompt_tokens, 2, 0), response_tokens.reshape(4, 5)], 1)
    mask = np.concatenate([np.repeat(prompt_mask, 2, 0), response_mask.reshape(4, 5)], 1)
    score = jax.jit(dec.score, static_argnums=1)  # what the reward_model stage trained
    expected = np.asarray(score(params, config, rows, mask)).reshape(2, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.ptp(expected) > 1e-3
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    _, placed = reward_models.load_stage_reward_model(
        str(tmp_path / "run" / "reward_model" / "params"),
        shardings=jax.tree.map(lambda _: replicated, params))
    assert all(x.sharding == replicated for x in jax.tree.leaves(placed))
    np.testing.assert_allclose(reward(inputs, params=placed), got, atol=1e-6, rtol=0)
    half = rewards.build_reward(dict(kind="model", path=str(tmp_path / "run" / "reward_model"),
                                     dtype="bfloat16"))
    assert half.params["decoder"]["embedding"].dtype == "bfloat16"
    np.testing.assert_allclose(half(inputs), got, atol=0.05 * np.abs(got).max(), rtol=0)


def test_own_reward_model_errors_name_the_path(tmp_path):
    write_reward_stage(tmp_path / "run", trunk_layers=0)
    stage = tmp_path / "run" / "onpolicy_dpo"
    (stage / "params").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="'onpolicy_dpo' is a 'onpolicy' stage, not a "):
        rewards.build_reward(dict(kind="model", path=str(stage)))
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "run" / "sft" /
                                                            "params") + ": missing")):
        rewards.build_reward(dict(kind="model", path=str(tmp_path / "run" / "sft")))


def word_tokenizer(texts):
    """A word-level HF tokenizer over `texts` (ids: <pad> 0, <unk> 1, </s> 2, then words)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from llm.tokenizer import Tokenizer

    words = sorted(set(" ".join(texts).split()))
    vocab = {"<pad>": PAD, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    assert len(vocab) <= V
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf, bos_token=None, eos_token="</s>", pad_token="<pad>")


def test_hf_reward_model_with_its_own_tokenizer_retokenizes_the_text(tmp_path):
    from llm.byte_tokenizer import ByteTokenizer

    prompts = ["Question: two plus two ? ", "Say hi\n"]  # decoded prompts end in a separator
    completions = [["it is four", "five"], ["hi there friend", "no"]]
    rm_tok = word_tokenizer(prompts + [c for row in completions for c in row])
    model = hf_reward_model("llama", tmp_path / "rm")
    rm_tok.save(str(tmp_path / "rm"))
    policy = ByteTokenizer()
    with pytest.raises(rewards.RewardError, match="set retokenize=True"):
        rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm")), tokenizer=policy)
    reward = rewards.build_reward(dict(kind="hf_model", path=str(tmp_path / "rm"),
                                       retokenize=True), tokenizer=policy)
    assert reward.needs_text
    inputs = rewards.RewardInputs(np.zeros((2, 1), np.int32), np.zeros((2, 1), bool),
                                  np.zeros((2, 2, 1), np.int32), np.zeros((2, 2, 1), bool),
                                  prompts, completions)
    got = reward(inputs)
    rows = [rm_tok.encode(p + c) for p, row in zip(prompts, completions) for c in row]
    assert 1 not in sum(rows, [])  # every word known: no <unk>
    tokens = np.full((4, max(map(len, rows))), PAD, np.int32)
    mask = np.zeros(tokens.shape, np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], mask[i, :len(r)] = r, 1
    np.testing.assert_allclose(got, hf_scores(model, tokens, mask).reshape(2, 2), atol=1e-4,
                               rtol=0)
    assert np.ptp(got) > 0.1
