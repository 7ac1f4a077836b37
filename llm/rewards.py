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
  fn        `fn` = "package.module:function" (or "path/to/file.py:function", run as a module)
            in TRL's reward-function convention
            `score(prompts: list[str], completions: list[str], **kwargs) -> list[float]`,
            called once per batch on flat lists of P·N items (prompt p repeated N times,
            item p·N + n is completion n of prompt p) with kwargs `completion_ids` (list of
            token-id lists) and every per-prompt column of `RewardInputs.columns` (repeated N
            times, e.g. `answer`), as TRL passes dataset columns; host-side Python;
  model     `path`: the project's own Bradley–Terry reward model, `<workdir>/<stage>` of a run's
            reward_model stage (`llm.reward_models`); `dtype` of its decoder ("float32");
  hf_model  `path`: a Hugging Face `*ForSequenceClassification` folder (Llama, Mistral, Qwen2,
            GPT-NeoX), pooled at the last non-pad token as transformers does; `dtype` of its
            parameters and activations; `retokenize=True` when its tokenizer is not the
            policy's (rows become rm_tokenizer.encode(prompt + completion) of the decoded text).

A Reward has `name` (the metric label: "gold/<name>"), `kind`, `needs_text` (True when it reads
decoded text), `last_seconds` (wall time of the last call, for the iteration's metrics) and,
for model kinds, `params` and a jit-able `score_fn(params, tokens [B, S], mask [B, S]) -> [B]`
over concat(prompt, response) rows, for the engine's one device scoring pass; the length rules
instead have a jit-able `response_fn(response_mask [..., Lr]) -> [...]` (`modeseek.rewards`).
Calling it on host arrays gives [P, N] float32; wrong shape, NaN/inf or an exception in a user
function raise `RewardError` naming the reward (the caller stops, keeping its last good
checkpoint).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from llm import reward_models, reward_text
from llm.reward_types import Reward, RewardError, RewardInputs, check_scores, decode_inputs
from modeseek import rewards as rule_rewards

KINDS = ("rule", "fn", "model", "hf_model")
RULES = ("neg_length", "neg_length_distance", "exact_match", "regex", "format")
_FIELDS = dict(kind="rule", name="", rule="", mode=-1.0, pattern="", path="", references=(),
               fn="", marker=reward_text.GSM8K_MARKER, retokenize=False, dtype="float32")

__all__ = ["KINDS", "RULES", "Reward", "RewardError", "RewardInputs", "build_reward",
           "build_rewards", "check_scores", "decode_inputs", "import_function", "reward_config"]


# ----------------------------------------------------------------------------- configs


def reward_config(kind: str = "rule", **fields) -> ml_collections.ConfigDict:
    """A reward spec with every field present, so a locked config accepts command-line
    overrides such as `--config.reward.fn=pkg.mod:score`. Fields: kind, name, rule, mode,
    pattern, path, references, fn, marker, retokenize, dtype (see the module docstring)."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(f"reward_config: unknown fields {unknown}; known: {sorted(_FIELDS)}")
    _check_kind(kind)
    if "mode" in fields:  # a float field, so that --config...mode=7.5 overrides work
        fields["mode"] = float(fields["mode"])
    return ml_collections.ConfigDict({**_FIELDS, **fields, "kind": kind})


def _check_kind(kind):
    if kind not in KINDS:
        raise RewardError(f"unknown reward kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _field(spec, key):
    value = spec.get(key, _FIELDS[key])
    return _FIELDS[key] if value is None else value


def build_reward(spec, *, tokenizer=None) -> Reward:
    """The Reward a spec (ConfigDict or dict; see `reward_config`) describes. `tokenizer`
    decodes text for text rewards when RewardInputs carries none."""
    unknown = sorted(set(spec.keys()) - set(_FIELDS))
    if unknown:
        raise RewardError(f"reward spec has unknown fields {unknown}; known: {sorted(_FIELDS)}")
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
    return reward_models.build_model_reward(kind, path, name=name, tokenizer=tokenizer,
                                            retokenize=bool(_field(spec, "retokenize")),
                                            dtype=_field(spec, "dtype"))


def build_rewards(proxy_spec, gold_specs: dict, *, tokenizer=None):
    """(proxy Reward, {label: gold Reward}); a gold spec without `name` is named by its key.
    proxy_spec=None gives proxy None (e.g. the proxy is a reward-model stage of the run)."""
    proxy = None if proxy_spec is None else build_reward(proxy_spec, tokenizer=tokenizer)
    golds = {}
    for label, spec in dict(gold_specs or {}).items():
        reward = build_reward(spec, tokenizer=tokenizer)
        if not _field(spec, "name"):
            reward.name = label
        golds[label] = reward
    return proxy, golds


# ----------------------------------------------------------------------------- the kinds


def _rule_reward(rule: str, name: str, spec, tokenizer) -> Reward:
    if rule in ("neg_length", "neg_length_distance"):
        response_fn = rule_rewards.negative_length
        if rule == "neg_length_distance":
            mode = float(_field(spec, "mode"))
            if mode < 0:
                raise RewardError(f"reward {name!r}: rule neg_length_distance needs mode >= 0, "
                                  f"got {mode}")
            response_fn = functools.partial(rule_rewards.negative_length_distance, mode=mode)
        compute = lambda inputs, _: response_fn(inputs.response_mask)
        return Reward(name, "rule", False, compute, response_fn=response_fn)
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
    """The callable at "package.module:function" (or "path/to/file.py:function"); RewardError
    saying which part failed: the module, a module it imports, or the attribute."""
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"reward {name!r}: fn={path!r} is not of the form "
                          "'package.module:function'")
    try:
        module = _import_module(module_name)
    except ModuleNotFoundError as e:
        ours = e.name == module_name or module_name.startswith(f"{e.name}.")
        where = "" if ours else f" (it imports {e.name!r}, which is missing)"
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


def _import_module(module_name: str):
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    if not os.path.isfile(module_name):
        raise FileNotFoundError(f"no file {module_name}")
    spec = importlib.util.spec_from_file_location(
        "modeseek_user_" + os.path.basename(module_name)[:-3], module_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_reward(path: str, name: str, tokenizer) -> Reward:
    name = name or path.split(":")[-1]
    fn = import_function(path, name=name)

    def compute(inputs, _):
        P, N, Lr = np.shape(inputs.response_tokens)
        tokens = np.asarray(inputs.response_tokens).reshape(P * N, Lr)
        mask = np.asarray(inputs.response_mask, bool).reshape(P * N, Lr)
        repeat = lambda values: [v for v in values for _ in range(N)]
        scores = fn(prompts=repeat(inputs.prompts),
                    completions=[c for row in inputs.completions for c in row],
                    completion_ids=[t[m].tolist() for t, m in zip(tokens, mask)],
                    **{k: repeat(v) for k, v in (inputs.columns or {}).items()})
        if scores is None:
            raise RewardError(f"reward {name!r}: fn={path!r} returned None, not a list of floats")
        scores = scores if isinstance(scores, np.ndarray) else list(scores)
        if any(s is None for s in scores):
            raise RewardError(f"reward {name!r}: fn={path!r} returned None for some completions "
                              "(every completion needs a float)")
        return scores

    return Reward(name, "fn", True, compute, tokenizer=tokenizer)
