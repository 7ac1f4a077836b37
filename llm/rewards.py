"""Rewards as data: a config names a rule, a user function or a reward-model checkpoint.

    reward_config(kind, **fields) -> ConfigDict      every field present (locked configs)
    build_reward(spec, *, tokenizer=None) -> Reward
    build_rewards(proxy_spec, gold_specs: dict, *, tokenizer=None) -> (Reward, {name: Reward})
    Reward(inputs: RewardInputs, params=None) -> np.ndarray float32 [P, N]

Kinds (`spec.kind`; a non-empty `spec.fn` selects "fn" whatever `kind` says, so
`--config.reward.fn=my_pkg.rewards:score` alone switches a config to a user function):
  rule      `rule` ∈ RULES: "neg_length" (−len, EOS counted), "neg_length_distance"
            (−|len − mode|, needs `mode`), "exact_match" (GSM8K style, see `llm.reward_text`),
            "regex" (1 if `pattern` is found in the completion), "format" (1 if the completion
            fullmatches `pattern`);
  fn        `fn` = "package.module:function" in TRL's reward-function convention
            `score(prompts: list[str], completions: list[str], **kwargs) -> list[float]`,
            called once per batch on flat lists of P·N items (prompt p repeated N times,
            item p·N + n is completion n of prompt p) with kwargs `completion_ids` (list of
            token-id lists) and every per-prompt column of `RewardInputs.columns` (repeated N
            times, e.g. `answer`), as TRL passes dataset columns; host-side Python;
  model     `path`: the project's own Bradley–Terry reward model, `<workdir>/<stage>` of a run's
            reward_model stage (`llm.reward_models`);
  hf_model  `path`: a Hugging Face `*ForSequenceClassification` folder (Llama, Mistral, Qwen2,
            GPT-NeoX), pooled at the last non-pad token as transformers does.

A Reward has `name` (the metric label: "gold/<name>"), `kind`, `needs_text` (True when it reads
decoded text), `last_seconds` (wall time of the last call, for the iteration's metrics) and,
for model kinds, `params` and a jit-able `score_fn(params, tokens [B, S], mask [B, S]) -> [B]`
over concat(prompt, response) rows, for the engine's one device scoring pass. Calling it on
host arrays gives [P, N] float32; wrong shape, NaN/inf or an exception in a user function
raise `RewardError` naming the reward (the caller stops and keeps its last good checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from llm import reward_models, reward_text
from llm.reward_text import RewardError
from modeseek import rewards as rule_rewards

KINDS = ("rule", "fn", "model", "hf_model")
RULES = ("neg_length", "neg_length_distance", "exact_match", "regex", "format")
_FIELDS = dict(kind="rule", name="", rule="", mode=-1.0, pattern="", path="", references=(),
               fn="", marker=reward_text.GSM8K_MARKER)

__all__ = ["KINDS", "RULES", "Reward", "RewardError", "RewardInputs", "build_reward",
           "build_rewards", "decode_inputs", "reward_config"]


class RewardInputs(NamedTuple):
    """One batch to score: P prompts × N responses.

    prompt_tokens [P, Lp] int32 left-padded, prompt_mask [P, Lp] bool; response_tokens
    [P, N, Lr] int32 right-padded, response_mask [P, N, Lr] bool (1 up to and including EOS);
    prompts: P decoded prompts; completions: [P][N] decoded completions; columns: per-prompt
    dataset columns {name: list of P values} passed on to user functions (e.g. "answer")."""

    prompt_tokens: Any
    prompt_mask: Any
    response_tokens: Any
    response_mask: Any
    prompts: list[str] | None = None
    completions: list[list[str]] | None = None
    columns: dict[str, list] | None = None


@dataclasses.dataclass(eq=False)
class Reward:
    """A reward: `reward(inputs, params=None) -> [P, N] float32` (see the module docstring)."""

    name: str
    kind: str
    needs_text: bool
    compute: Callable[[RewardInputs, Any], Any]
    params: Any = None
    score_fn: Callable | None = None
    tokenizer: Any = None
    last_seconds: float = 0.0

    def __call__(self, inputs: RewardInputs, params=None) -> np.ndarray:
        start = time.perf_counter()
        P, N = np.shape(inputs.response_mask)[:2]
        if self.needs_text:
            inputs = decode_inputs(inputs, self.tokenizer, name=self.name)
        try:
            scores = self.compute(inputs, self.params if params is None else params)
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {self.name!r} ({self.kind}) raised "
                              f"{type(e).__name__}: {e}") from e
        self.last_seconds = time.perf_counter() - start
        return check_scores(self.name, scores, (P, N))


def check_scores(name: str, scores, shape: tuple[int, int]) -> np.ndarray:
    """`scores` as float32 [P, N]; RewardError naming the reward on wrong size or NaN/inf."""
    try:
        array = np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {name!r}: returned values that are not numbers ({e})") from None
    if array.size != shape[0] * shape[1]:
        raise RewardError(f"reward {name!r}: returned {array.size} values of shape "
                          f"{array.shape}, expected {shape[0] * shape[1]} (P={shape[0]} prompts "
                          f"× N={shape[1]} samples)")
    array = array.reshape(shape)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        p, n = bad[0]
        raise RewardError(f"reward {name!r}: {len(bad)} non-finite values, first "
                          f"{array[p, n]} at prompt {p}, sample {n}")
    return array


def decode_inputs(inputs: RewardInputs, tokenizer, *, name: str = "reward") -> RewardInputs:
    """`inputs` with prompts/completions decoded from the tokens where they are missing
    (`tokenizer.decode(ids[mask], skip_special_tokens=True)`, so EOS is dropped)."""
    if inputs.prompts is not None and inputs.completions is not None:
        return inputs
    if tokenizer is None:
        raise RewardError(f"reward {name!r} reads text: pass RewardInputs.prompts/completions "
                          "or build it with a tokenizer")
    prompts, completions = inputs.prompts, inputs.completions
    if prompts is None:
        prompts = [tokenizer.decode(t[m]) for t, m in zip(np.asarray(inputs.prompt_tokens),
                                                          np.asarray(inputs.prompt_mask, bool))]
    if completions is None:
        completions = [[tokenizer.decode(t[m]) for t, m in zip(ts, ms)]
                       for ts, ms in zip(np.asarray(inputs.response_tokens),
                                         np.asarray(inputs.response_mask, bool))]
    return inputs._replace(prompts=prompts, completions=completions)


# ----------------------------------------------------------------------------- configs


def reward_config(kind: str = "rule", **fields) -> ml_collections.ConfigDict:
    """A reward spec with every field present, so a locked config accepts command-line
    overrides such as `--config.reward.fn=pkg.mod:score`. Fields: kind, name, rule, mode,
    pattern, path, references, fn, marker (see the module docstring)."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(f"reward_config: unknown fields {unknown}; known: {sorted(_FIELDS)}")
    _check_kind(kind)
    return ml_collections.ConfigDict({**_FIELDS, **fields, "kind": kind})


def _check_kind(kind):
    if kind not in KINDS:
        raise RewardError(f"unknown reward kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _field(spec, key):
    value = spec.get(key, _FIELDS[key]) if hasattr(spec, "get") else _FIELDS[key]
    return _FIELDS[key] if value is None else value


def build_reward(spec, *, tokenizer=None) -> Reward:
    """The Reward a spec (ConfigDict or dict; see `reward_config`) describes. `tokenizer`
    decodes text for text rewards when RewardInputs carries none."""
    fn_path = _field(spec, "fn")
    kind = "fn" if fn_path else _field(spec, "kind")
    _check_kind(kind)
    name = _field(spec, "name") if kind == _field(spec, "kind") else ""
    if kind == "fn":
        return _function_reward(fn_path, name, tokenizer)
    if kind == "rule":
        rule = _field(spec, "rule")
        if rule not in RULES:
            raise RewardError(f"unknown reward rule {rule!r}; known rules: {', '.join(RULES)}")
        return _rule_reward(rule, name or rule, spec, tokenizer)
    path = _field(spec, "path")
    if not path:
        raise RewardError(f"reward kind {kind!r} needs `path` (a checkpoint folder)")
    if kind == "model":
        config, params = reward_models.load_stage_reward_model(path)
        score_fn = reward_models.make_score_fn(config)
    else:
        config, params, pad_id = reward_models.load_hf_reward_model(path)
        score_fn = reward_models.make_score_fn(config, pad_id=pad_id)
    jitted = jax.jit(score_fn)
    return Reward(name or f"{kind}:{path.rstrip('/').split('/')[-1]}", kind, False,
                  _model_compute(jitted), params=params, score_fn=score_fn)


def build_rewards(proxy_spec, gold_specs: dict, *, tokenizer=None):
    """(proxy Reward, {label: gold Reward}); a gold spec without `name` is named by its key."""
    proxy = build_reward(proxy_spec, tokenizer=tokenizer)
    golds = {}
    for label, spec in dict(gold_specs or {}).items():
        reward = build_reward(spec, tokenizer=tokenizer)
        if not _field(spec, "name"):
            reward.name = label
        golds[label] = reward
    return proxy, golds


# ----------------------------------------------------------------------------- the kinds


def _rule_reward(rule: str, name: str, spec, tokenizer) -> Reward:
    if rule == "neg_length":
        compute = lambda inputs, _: rule_rewards.negative_length(inputs.response_mask)
        return Reward(name, "rule", False, compute)
    if rule == "neg_length_distance":
        mode = float(_field(spec, "mode"))
        if mode < 0:
            raise RewardError(f"reward {name!r}: rule neg_length_distance needs mode >= 0, "
                              f"got {mode}")
        compute = lambda inputs, _: rule_rewards.negative_length_distance(inputs.response_mask,
                                                                          mode)
        return Reward(name, "rule", False, compute)
    score_one = reward_text.make_text_rule(rule, name, pattern=_field(spec, "pattern"),
                                           path=_field(spec, "path"),
                                           references=_field(spec, "references"),
                                           marker=_field(spec, "marker"))

    def compute(inputs, _):
        answers = (inputs.columns or {}).get("answer")
        return [[score_one(prompt, c, None if answers is None else answers[p])
                 for c in inputs.completions[p]] for p, prompt in enumerate(inputs.prompts)]

    return Reward(name, "rule", True, compute, tokenizer=tokenizer)


def import_function(path: str, *, name: str = "reward") -> Callable:
    """The callable at "package.module:function"; RewardError saying which part failed."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"reward {name!r}: fn={path!r} is not of the form "
                          "'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        where = "" if e.name == module_name else f" (it imports {e.name!r}, which is missing)"
        raise RewardError(f"reward {name!r}: fn={path!r}: cannot import module "
                          f"{module_name!r}{where}: {e}") from e
    except Exception as e:
        raise RewardError(f"reward {name!r}: fn={path!r}: importing module {module_name!r} "
                          f"failed: {type(e).__name__}: {e}") from e
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise RewardError(f"reward {name!r}: fn={path!r}: module {module_name!r} "
                              f"({getattr(module, '__file__', '?')}) has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"reward {name!r}: fn={path!r} is a {type(fn).__name__}, not callable")
    return fn


def _function_reward(path: str, name: str, tokenizer) -> Reward:
    name = name or path.split(":")[-1]
    fn = import_function(path, name=name)

    def compute(inputs, _):
        N = len(inputs.completions[0]) if inputs.completions else 0
        prompts = [p for p in inputs.prompts for _ in range(N)]
        completions = [c for row in inputs.completions for c in row]
        ids = [list(map(int, t[m])) for t, m in zip(
            np.asarray(inputs.response_tokens).reshape(-1, np.shape(inputs.response_tokens)[-1]),
            np.asarray(inputs.response_mask, bool).reshape(len(completions), -1))]
        columns = {k: [v for v in values for _ in range(N)]
                   for k, values in (inputs.columns or {}).items()}
        scores = fn(prompts=prompts, completions=completions, completion_ids=ids, **columns)
        if scores is None or any(s is None for s in scores):
            raise RewardError(f"reward {name!r}: fn={path!r} returned None for some completions "
                              "(every completion needs a float)")
        return scores

    return Reward(name, "fn", True, compute, tokenizer=tokenizer)


def _model_compute(jitted):
    """Host-side compute of a model reward: rows concat(prompt, response) → jitted score."""

    def compute(inputs, params):
        tokens, mask = concat_rows(inputs)
        P, N = np.shape(inputs.response_mask)[:2]
        return np.asarray(jitted(params, tokens, mask)).reshape(P, N)

    return compute


def concat_rows(inputs: RewardInputs):
    """([P·N, Lp + Lr] tokens, mask): each prompt repeated N times, then its responses; masked
    slots hold token 0 (pooling reads the mask, so the id never matters)."""
    P, N, Lr = np.shape(inputs.response_tokens)
    prompt = np.repeat(np.asarray(inputs.prompt_tokens, np.int32), N, axis=0)
    prompt_mask = np.repeat(np.asarray(inputs.prompt_mask, bool), N, axis=0)
    tokens = np.concatenate([prompt, np.asarray(inputs.response_tokens, np.int32)
                             .reshape(P * N, Lr)], axis=1)
    mask = np.concatenate([prompt_mask, np.asarray(inputs.response_mask, bool)
                           .reshape(P * N, Lr)], axis=1)
    return np.where(mask, tokens, 0), mask
