"""What a stage needs around its loop: the base model and tokenizer, parameters placed in their
shardings, the reward model of an earlier stage, evaluation, and the stage's final output.

Models (`cfg.model`): "tiny" (a randomly initialised `DecoderConfig.tiny` over
`llm.byte_tokenizer`, for tests and smoke runs), "smollm2" (the embedded SmolLM2-135M-Instruct
GGUF), a `.gguf` file or a Hugging Face folder (safetensors). A stage starts from the base model
or, with `init=<stage name>`, from that earlier stage's saved parameters; each stage saves its
final parameters to <stage>/params (orbax) and its summary to <stage>/summary.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from llm import checkpointing, config_checks, reward_pass, rewards, run_folder, steps
from llm import sharding as shd
from llm import state as st
from llm.byte_tokenizer import VOCAB_SIZE, ByteTokenizer
from llm.checkpoints import load_sharded, open_model
from llm.data import make_loader
from llm.reward_models import concat_rows
from llm.reward_types import Reward
from modeseek import decoder as dec
from modeseek import sampler


@functools.lru_cache(maxsize=2)
def load_base(name: str, max_len: int = 1024):
    """(DecoderConfig, ModelFiles — the opened, unread checkpoint — or None for random init,
    tokenizer), cached per process. No tensor is read here: `StageEnv.base_params` reads them
    one at a time into their shardings (`llm.checkpoints.load_sharded`)."""
    if name == "tiny":
        return dec.DecoderConfig.tiny(vocab_size=VOCAB_SIZE, max_len=max_len), None, ByteTokenizer()
    model = open_model(name)
    return model.config, model, model.tokenizer


def _abstract(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


@dataclasses.dataclass
class StageEnv:
    cfg: Any
    stage_cfg: Any
    experiment_dir: str
    mesh: Any
    model_config: dec.DecoderConfig
    checkpoint: Any   # hf_load.ModelFiles of cfg.model, or None (random init)
    tokenizer: Any

    @classmethod
    def create(cls, cfg, stage_cfg, stage_dir, mesh):
        config, checkpoint, tokenizer = load_base(cfg.model)
        # prompt + response (or new tokens) must fit the model's context: refused, never cut
        config_checks.check_context_fits(cfg, config.max_len, stages=(stage_cfg.name,))
        config = with_run_dtypes(stage_model_config(config, stage_cfg), cfg)
        return cls(cfg, stage_cfg, run_folder.parent_dir(stage_dir), mesh, config, checkpoint,
                   tokenizer)

    def config_of(self, stage_name: str) -> dec.DecoderConfig:
        return with_run_dtypes(stage_model_config(load_base(self.cfg.model)[0],
                                                  self.cfg.stages[stage_name]), self.cfg)

    # ------------------------------------------------------------------ parameters
    def base_params(self):
        shardings, fallbacks = st.param_shardings(self.model_config, self.mesh)
        if fallbacks and jax.process_index() == 0:
            print(f"sharding: replicated (not divisible): {', '.join(fallbacks)}")
        if self.checkpoint is None:
            key = jax.random.key(self.cfg.seed)
            return st.init_params_sharded(key, self.model_config, shardings), shardings
        # a trunk stage reads only its first layers; tensor by tensor, no host copy
        return load_sharded(self.checkpoint, self.model_config, shardings), shardings

    def load_stage_params(self, stage_name: str, *, with_head: bool):
        config = self.config_of(stage_name)
        shardings, _ = st.param_shardings(config, self.mesh, with_head=with_head)
        init = dec.init_scalar_model if with_head else dec.init_params
        shapes = jax.eval_shape(functools.partial(init, config=config), jax.random.key(0))
        path = os.fspath(epath.Path(self.experiment_dir) / stage_name / "params")
        if not epath.Path(path).is_dir():
            raise FileNotFoundError(f"{path}: stage {stage_name!r} has not finished (no params)")
        return checkpointing.load_params(path, _abstract(shapes, shardings)), shardings

    def initial_params(self, *, with_head: bool = False):
        """(params, shardings) of the policy (or of a scalar model when `with_head`)."""
        init = self.stage_cfg.init
        if init:
            if self.config_of(init) != self.model_config:
                raise ValueError(f"stage {self.stage_cfg.name}: init stage {init!r} has another "
                                 "model shape (trunk_layers)")
            decoder, dec_sh = self.load_stage_params(init, with_head=False)
        else:
            decoder, dec_sh = self.base_params()
        if not with_head:
            return decoder, dec_sh
        head = dec.init_scalar_head(jax.random.key(self.cfg.seed + 1), self.model_config)
        head_sh = jax.tree.map(lambda _: shd.replicated(self.mesh), head)
        head = shd.place_params(jax.device_get(head), head_sh)
        return {"decoder": decoder, "head": head}, {"decoder": dec_sh, "head": head_sh}

    def reward_params(self):
        name = self.stage_cfg.reward_model
        return self.load_stage_params(name, with_head=True)[0] if name else None

    def reward_config(self) -> dec.DecoderConfig:
        name = self.stage_cfg.reward_model
        return self.config_of(name) if name else self.model_config

    def rewards(self) -> tuple[Reward, dict]:
        """(proxy, {name: gold}): the proxy trains the on-policy stages, the golds are logged
        only. Proxy: `cfg.reward` when it names one (a rule, `fn` or a checkpoint `path`),
        else the stage's `reward_model` stage, else the first gold reward."""
        spec = self.cfg.reward
        active = bool(spec.fn or spec.rule or spec.path)
        proxy, golds = rewards.build_rewards(spec if active else None, self.cfg.gold,
                                             tokenizer=self.tokenizer)
        if proxy is None and self.stage_cfg.reward_model:
            proxy = self._stage_reward_model()
        if proxy is None:
            if not golds:
                raise ValueError(f"stage {self.stage_cfg.name}: no training reward: set "
                                 "reward (a rule, fn or path), the stage's reward_model, or a "
                                 "gold reward")
            proxy = next(iter(golds.values()))
        return proxy, golds

    def _stage_reward_model(self) -> Reward:
        """The reward_model stage of this run as a device Reward (parameters sharded)."""
        config, params = self.reward_config(), self.reward_params()

        def score_fn(p, tokens, mask):
            return dec.score(p, config, tokens, mask)

        jitted = jax.jit(score_fn)
        return Reward(self.stage_cfg.reward_model, "model", False,
                      lambda inputs, p: np.asarray(jitted(p, *concat_rows(inputs))),
                      params=params, score_fn=score_fn)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The one EOS set (every id that ends a turn) used by sampling, training data and
        evaluation."""
        return tuple(getattr(self.tokenizer, "eos_ids", ())) or (int(self.tokenizer.eos_id),)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0

    # ------------------------------------------------------------------ evaluation
    def _loader(self, batch_size, prompts_only):
        per_process = shd.batch_size_multiple(self.mesh, batch_size) // jax.process_count()
        data = self.cfg.data
        it, _ = make_loader(data.test, self.tokenizer, batch_size=per_process,
                            max_prompt_len=data.max_prompt_len,
                            max_response_len=None if prompts_only else data.max_response_len,
                            prompts_only=prompts_only, shuffle=False, num_epochs=1,
                            num_threads=1, **loader_options(data))
        return it

    def make_evaluator(self, kind: str):
        """params -> eval metrics: held-out pair accuracy for reward models, else, for one
        sample per held-out prompt, eval/length, eval/proxy_reward, eval/gold/<name> for every
        gold reward and eval/gold_reward (the first gold's value)."""
        ev = self.cfg.eval
        if kind == "reward_model":
            pairs = [shd.global_batch({k: b[k] for k in steps.PAIR_KEYS}, self.mesh)
                     for b in self._loader(ev.batch_size, False)]
            scores_fn = st.jit_eval(lambda p, b: steps.reward_scores(p, self.model_config, b),
                                    self.mesh)

            def evaluate_rm(params):
                scores = np.concatenate([jax.device_get(scores_fn(params, b)) for b in pairs])
                return {"eval/accuracy": float(np.mean(scores[:, 0] > scores[:, 1])),
                        "eval/margin": float(np.mean(scores[:, 0] - scores[:, 1]))}
            return evaluate_rm
        prompts = next(iter(self._loader(ev.num_prompts, True)))
        prompts = shd.global_batch({k: prompts[k] for k in ("prompt_tokens", "prompt_mask")},
                                   self.mesh)
        device, host = reward_pass.split(reward_pass.labelled(*self.rewards()))
        params = reward_pass.device_params(device)
        first_gold = next((k for k in (*device, *host) if k.startswith("gold/")), None)

        # prompts are arguments, not closed-over constants: they span every process's devices
        def sample_and_score(policy_params, reward_params, prompt_tokens, prompt_mask, key):
            out = sampler.sample(key, policy_params, self.model_config, prompt_tokens,
                                 prompt_mask, max_new_tokens=ev.max_new_tokens,
                                 temperature=ev.temperature, eos_id=self.eos_ids,
                                 pad_id=self.pad_id)
            shape = (out.tokens.shape[0], 1)
            return out, reward_pass.device_scores(device, reward_params, out, shape)

        run = st.jit_eval(sample_and_score, self.mesh)
        key = jax.random.key(self.cfg.seed + 7)  # the same samples' randomness at every eval

        def evaluate_policy(params_):
            policy = params_["decoder"] if "decoder" in params_ else params_
            out, scores = run(policy, params, prompts["prompt_tokens"], prompts["prompt_mask"],
                              key)
            shape = (out.tokens.shape[0], 1)
            more, _ = reward_pass.host_scores(host, out, shape)
            scores = {**scores, **more}
            reward_pass.check_all({**device, **host}, scores, shape)
            length = np.asarray(jax.device_get(out.response_mask)).sum(1)
            metrics = {"eval/length": float(length.mean())}
            metrics.update({f"eval/{k}_reward" if k == "proxy" else f"eval/{k}":
                            float(np.mean(jax.device_get(v))) for k, v in scores.items()})
            if first_gold is not None:
                metrics["eval/gold_reward"] = metrics[f"eval/{first_gold}"]
            return metrics
        return evaluate_policy

    # ------------------------------------------------------------------ output
    def finish(self, stage_dir: str, params, last_metrics: dict) -> dict:
        checkpointing.save_params(os.fspath(epath.Path(stage_dir) / "params"), params)
        summary = {"status": "done", "stage": self.stage_cfg.name, "kind": self.stage_cfg.kind,
                   "algorithm": self.stage_cfg.algorithm,
                   "final": {k: float(v) for k, v in last_metrics.items()}}
        if jax.process_index() == 0:  # summary.json, then the done marker (both atomic)
            run_folder.mark_stage_done(stage_dir, summary)
        return summary


def with_run_dtypes(config: dec.DecoderConfig, cfg) -> dec.DecoderConfig:
    """The model with the run's `param_dtype` / `compute_dtype` when the config sets them
    (checkpoint tensors are cast to param_dtype one at a time as they are read)."""
    return config.replace(param_dtype=cfg.get("param_dtype", None) or config.param_dtype,
                          dtype=cfg.get("compute_dtype", None) or config.dtype)


def stage_model_config(base: dec.DecoderConfig, stage_cfg) -> dec.DecoderConfig:
    """A stage's model: the base, or for `trunk_layers` = k > 0 its first k layers (a cheaper
    reward-model trunk: embedding, layers 0..k−1, final norm, scalar head)."""
    k = stage_cfg.trunk_layers
    if not k:
        return base
    if k > base.num_layers:
        raise ValueError(f"stage {stage_cfg.name}: trunk_layers={k} > {base.num_layers} layers")
    return base.replace(num_layers=k)


def loader_options(data) -> dict:
    """The `make_loader` keywords every stage takes from `config.data`."""
    return dict(use_chat_template=data.use_chat_template, skip_bad_rows=data.skip_bad_rows,
                system_prompt=data.system_prompt)


def train_source(cfg, stage_cfg):
    """The stage's training data: the file, or its first `stage.train_rows` rows (0 = all)."""
    if not stage_cfg.train_rows:
        return cfg.data.train
    from llm.data import read_preference_file
    from llm.data.records import take_rows

    rows, _ = read_preference_file(cfg.data.train, skip_bad_rows=cfg.data.skip_bad_rows)
    return take_rows(rows, stage_cfg.train_rows, source=cfg.data.train)
