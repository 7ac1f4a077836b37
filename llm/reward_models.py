"""Reward-model checkpoints as scalar models `{"decoder", "head"}` with a jit-able score.

    load_stage_reward_model(path, *, shardings=None, dtype=None) -> (DecoderConfig, params)
        the project's own Bradley–Terry model: a run folder's reward_model stage output
        (`<workdir>/<stage>/params`, orbax, written by `checkpointing.save_params` at the end of
        the stage); its DecoderConfig is rebuilt from `<workdir>/config.json` (the run's model
        and the stage's `trunk_layers`). Scored with `modeseek.decoder.score` — the head at the
        last slot whose mask is 1 — exactly as the stage trained it.
    load_hf_reward_model(path, *, dtype="float32") -> (DecoderConfig, host params, pad_token_id)
        a Hugging Face `{Llama,Mistral,Qwen2,GPTNeoX}ForSequenceClassification` folder
        (config.json + safetensors; pickle files are refused), read with `llm.safetensors_io`.
    make_score_fn(config, *, pad_id=None) -> score_fn(params, tokens [B, S], mask [B, S]) -> [B]
    build_model_reward(kind, path, *, name, tokenizer=None, retokenize=False, dtype="float32")
        -> Reward (kind "model" | "hf_model"), scoring concat(prompt, response) rows

Pooling as transformers 5.24 does (`GenericForSequenceClassification.forward`; here
`modeseek.rewards.pool_at_last_token`): the score is read at the rightmost position whose token
is not `pad_token_id`,
    i = argmax_t (t · 1[token_t ≠ pad])      (0 when every token is pad),
which serves left and right padding alike. Here a slot must also have mask 1, so masked slots
count as pad whatever id they hold; on input whose padding holds `pad_token_id` this is
transformers' index. Consequence kept on purpose: when pad_token_id equals the EOS id (common
for Llama/Qwen2 reward models), a trailing EOS is skipped and the score is read at the token
before it, as in transformers. Without a pad_token_id transformers reads the last position (and
refuses batches > 1); here it is then the last slot with mask 1.

Positions are cumsum(mask) − 1 (`modeseek.decoder`): scores do not depend on padding. That is
transformers' result on right-padded input and on left-padded input when it is given
`position_ids = cumsum(mask) − 1` (its default, arange, shifts left-padded rows).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from llm import checkpointing, hf_layout, run_folder
from llm.checkpoints import _read_config as read_config
from llm.reward_types import Reward, RewardError, RewardInputs
from llm.safetensors_io import CheckpointError, read_checkpoint_dir
from llm.tokenizer import load_tokenizer
from modeseek import decoder as dec
from modeseek import rewards as rule_rewards
from modeseek.sampler import pad_prompts


def make_score_fn(config: dec.DecoderConfig, *, pad_id: int | None = None):
    """score_fn(params, tokens [B, S], mask [B, S]) -> [B] float32, pure and jit-able.

    pad_id=None: the project's convention (`modeseek.decoder.score`, last slot with mask 1);
    an int: transformers' sequence-classification pooling (see the module docstring)."""
    if pad_id is None:
        return functools.partial(_own_score, config=config)
    return functools.partial(_hf_score, config=config, pad_id=int(pad_id))


def _own_score(params, tokens_BxS, mask_BxS, *, config):
    return dec.score(params, config, tokens_BxS, mask_BxS)


def _hf_score(params, tokens_BxS, mask_BxS, *, config, pad_id):
    values_BxS = dec.token_values(params, config, tokens_BxS, mask_BxS)
    return rule_rewards.pool_at_last_token(values_BxS, mask_BxS, tokens_BxS, pad_id)


def load_hf_reward_model(path: str, *, dtype: str = "float32", param_dtype: str = "float32"):
    """(DecoderConfig, params {"decoder", "head"} as host NumPy arrays (place them with
    `llm.sharding.place_params`), pad_token_id or None)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face "
                              "*ForSequenceClassification folder)")
    hf = read_config(path)
    config, params = hf_layout.reward_model_from_hf(hf, read_checkpoint_dir(path), source=path,
                                                    dtype=dtype, param_dtype=param_dtype)
    pad_id = hf.get("pad_token_id")
    return config, params, None if pad_id is None else int(pad_id)


def stage_reward_model_config(stage_dir: str) -> dec.DecoderConfig:
    """The DecoderConfig a run's reward_model stage trained (from <workdir>/config.json)."""
    from llm import models  # lazy: loads the base model's config (and, for real models, weights)

    workdir, stage = os.path.split(run_folder.absolute(stage_dir))
    run = read_config(workdir)
    stage_cfg = (run.get("stages") or {}).get(stage)
    if stage_cfg is None:
        raise CheckpointError(f"{workdir}/config.json has no stage {stage!r} (stages: "
                              f"{sorted(run.get('stages') or {})})")
    if stage_cfg.get("kind") != "reward_model":
        raise CheckpointError(f"{stage_dir}: stage {stage!r} is a {stage_cfg.get('kind')!r} "
                              "stage, not a reward_model stage")
    if not run.get("model"):
        raise CheckpointError(f"{workdir}/config.json: no `model` (the run's base model)")
    base = models.load_base(run["model"])[0]
    return models.stage_model_config(base, ml_collections.ConfigDict(stage_cfg))


def load_stage_reward_model(path: str, *, shardings=None, dtype: str | None = None):
    """(DecoderConfig, params {"decoder", "head"}) of `<workdir>/<stage>` (or its params/),
    restored into `shardings` (a tree like the params; default: the first local device), the
    decoder's parameters and activations cast to `dtype` when given (the head stays float32)."""
    path = run_folder.absolute(path)
    if os.path.basename(path) == "params":
        path = os.path.dirname(path)
    params_dir = os.path.join(path, "params")
    if not epath.Path(params_dir).is_dir():
        raise CheckpointError(f"{params_dir}: missing (has the reward_model stage finished?)")
    config = stage_reward_model_config(path)
    if dtype is not None:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    shapes = jax.eval_shape(functools.partial(dec.init_scalar_model, config=config),
                            jax.random.key(0))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    try:
        params = checkpointing.load_params(params_dir, abstract)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{params_dir}: not a reward model of the run's config ({e})") \
            from None
    return config, params


# ----------------------------------------------------------------------------- as a Reward
_PROBE = "Hello, world! 12345 naïve ### Answer:"


def build_model_reward(kind: str, path: str, *, name: str, tokenizer=None,
                       retokenize: bool = False, dtype: str = "float32") -> Reward:
    """A Reward scoring concat(prompt, response) rows with a "model" or "hf_model" checkpoint.

    By default the model reads the policy's token ids (the project's own reward model always
    shares the policy's tokenizer). An HF reward model with another tokenizer needs
    `retokenize=True`: each row is then `rm_tokenizer.encode(prompt + completion)` of the
    decoded text (tokenizer.json of the folder), right-padded to a bucketed length. When the
    folder has a tokenizer and a policy `tokenizer` is given, building without retokenize
    checks that both encode a probe text alike (and that the policy's ids fit the vocabulary).
    `dtype`: the decoder's parameters and activations, e.g. "bfloat16" on accelerators."""
    name = name or os.path.basename(os.path.normpath(path))
    if kind == "model":
        config, params = load_stage_reward_model(path, dtype=dtype)
        score_fn, pad_id = make_score_fn(config), None
    else:
        config, params, pad_id = load_hf_reward_model(path, dtype=dtype, param_dtype=dtype)
        score_fn = make_score_fn(config, pad_id=pad_id)
    jitted = jax.jit(score_fn)
    rm_tokenizer = None
    if kind == "hf_model" and os.path.exists(os.path.join(path, "tokenizer.json")):
        rm_tokenizer = load_tokenizer(path)
    if retokenize:
        if rm_tokenizer is None:
            raise RewardError(f"reward {name!r}: retokenize needs {path}/tokenizer.json")
        compute = _retokenized_compute(jitted, rm_tokenizer, 0 if pad_id is None else pad_id)
        return Reward(name, kind, True, compute, params=params, score_fn=score_fn,
                      tokenizer=tokenizer)
    if tokenizer is not None:
        _check_same_tokens(name, path, config, tokenizer, rm_tokenizer)
    return Reward(name, kind, False, functools.partial(_rows_compute, jitted), params=params,
                  score_fn=score_fn)


def _check_same_tokens(name, path, config, tokenizer, rm_tokenizer):
    if tokenizer.vocab_size > config.vocab_size:
        raise RewardError(f"reward {name!r}: the policy's vocabulary ({tokenizer.vocab_size} "
                          f"ids) exceeds the reward model's ({config.vocab_size}, {path}); "
                          "set retokenize=True to score the decoded text")
    if rm_tokenizer is not None and (list(tokenizer.encode(_PROBE, add_special_tokens=False))
                                     != rm_tokenizer.encode(_PROBE, add_special_tokens=False)):
        raise RewardError(f"reward {name!r}: {path}/tokenizer.json encodes text differently "
                          "from the policy's tokenizer; set retokenize=True to score the "
                          "decoded text")


def _rows_compute(jitted, inputs: RewardInputs, params):
    tokens, mask = concat_rows(inputs)
    P, N = np.shape(inputs.response_mask)[:2]
    return np.asarray(jitted(params, tokens, mask)).reshape(P, N)


def _retokenized_compute(jitted, rm_tokenizer, pad_id):
    def compute(inputs: RewardInputs, params):
        P, N = len(inputs.completions), len(inputs.completions[0])
        ids = [rm_tokenizer.encode(prompt + completion)
               for prompt, row in zip(inputs.prompts, inputs.completions) for completion in row]
        tokens, mask = pad_prompts(ids, pad_id, side="right")
        return np.asarray(jitted(params, tokens, mask)).reshape(P, N)

    return compute


def concat_rows(inputs: RewardInputs):
    """([P·N, Lp + Lr] tokens, mask): each prompt repeated N times, then its responses, the
    layout the sampler writes; masked slots hold id 0 (pooling ignores masked slots)."""
    P, N, Lr = np.shape(inputs.response_tokens)
    prompt = np.repeat(np.asarray(inputs.prompt_tokens, np.int32), N, axis=0)
    prompt_mask = np.repeat(np.asarray(inputs.prompt_mask, bool), N, axis=0)
    tokens = np.concatenate([prompt, np.asarray(inputs.response_tokens, np.int32)
                             .reshape(P * N, Lr)], axis=1)
    mask = np.concatenate([prompt_mask, np.asarray(inputs.response_mask, bool)
                           .reshape(P * N, Lr)], axis=1)
    return np.where(mask, tokens, 0), mask
