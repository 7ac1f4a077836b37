"""Reward-model checkpoints as scalar models `{"decoder", "head"}` with a jit-able score.

    load_stage_reward_model(path) -> (DecoderConfig, params)
        the project's own Bradley–Terry model: a run folder's reward_model stage output
        (`<workdir>/<stage>/params`, orbax, written by `checkpointing.save_params` at the end of
        the stage); its DecoderConfig is rebuilt from `<workdir>/config.json` (the run's model
        and the stage's `trunk_layers`). Scored with `modeseek.decoder.score` — the head at the
        last slot whose mask is 1 — exactly as the stage trained it.
    load_hf_reward_model(path, *, dtype="float32") -> (DecoderConfig, params, pad_token_id)
        a Hugging Face `{Llama,Mistral,Qwen2,GPTNeoX}ForSequenceClassification` folder
        (config.json + safetensors; pickle files are refused), read with `llm.safetensors_io`.
    make_score_fn(config, *, pad_id=None) -> score_fn(params, tokens [B, S], mask [B, S]) -> [B]
    hf_pool_index(tokens [B, S], mask [B, S], pad_id) -> [B]

Pooling as transformers 5.24 does (`GenericForSequenceClassification.forward`): the score is
read at the rightmost position whose token is not `pad_token_id`,
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
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from llm import checkpointing, hf_layout
from llm.safetensors_io import CheckpointError, read_checkpoint_dir
from modeseek import decoder as dec


def hf_pool_index(tokens_BxS: jax.Array, mask_BxS: jax.Array, pad_id: int | None) -> jax.Array:
    """Rightmost slot with mask 1 and token ≠ pad_id (transformers' pooled position)."""
    valid_BxS = mask_BxS.astype(bool)
    if pad_id is not None:
        valid_BxS &= tokens_BxS != pad_id
    slots = jnp.arange(tokens_BxS.shape[1], dtype=jnp.int32)
    return jnp.argmax(slots * valid_BxS.astype(jnp.int32), axis=1)


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
    index_B = hf_pool_index(tokens_BxS, mask_BxS, pad_id)
    return jnp.take_along_axis(values_BxS, index_B[:, None], axis=1)[:, 0]


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_hf_reward_model(path: str, *, dtype: str = "float32", param_dtype: str = "float32"):
    """(DecoderConfig, params {"decoder", "head"} as jax arrays, pad_token_id or None)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face "
                              "*ForSequenceClassification folder)")
    hf = _read_json(os.path.join(path, "config.json"))
    config, params = hf_layout.reward_model_from_hf(hf, read_checkpoint_dir(path), source=path,
                                                    dtype=dtype, param_dtype=param_dtype)
    pad_id = hf.get("pad_token_id")
    return config, jax.tree.map(jnp.asarray, params), None if pad_id is None else int(pad_id)


def stage_reward_model_config(stage_dir: str) -> dec.DecoderConfig:
    """The DecoderConfig a run's reward_model stage trained (from <workdir>/config.json)."""
    from llm import models  # lazy: loads the base model's config (and, for real models, weights)

    workdir, stage = os.path.split(os.path.abspath(stage_dir))
    run = _read_json(os.path.join(workdir, "config.json"))
    stage_cfg = (run.get("stages") or {}).get(stage)
    if stage_cfg is None:
        raise CheckpointError(f"{workdir}/config.json has no stage {stage!r} (stages: "
                              f"{sorted(run.get('stages') or {})})")
    if stage_cfg.get("kind") != "reward_model":
        raise CheckpointError(f"{stage_dir}: stage {stage!r} is a {stage_cfg.get('kind')!r} "
                              "stage, not a reward_model stage")
    base = models.load_base(run["model"])[0]
    return models.stage_model_config(base, ml_collections.ConfigDict(stage_cfg))


def load_stage_reward_model(path: str):
    """(DecoderConfig, params {"decoder", "head"}) of `<workdir>/<stage>` (or its params/)."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "params":
        path = os.path.dirname(path)
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{params_dir}: missing (has the reward_model stage finished?)")
    config = stage_reward_model_config(path)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(functools.partial(dec.init_scalar_model, config=config),
                            jax.random.key(0))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            shapes)
    try:
        params = checkpointing.load_params(params_dir, abstract)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{params_dir}: not a reward model of the run's config ({e})") \
            from None
    return config, params
