"""Config validation for `python -m llm` at the edge, before any compilation, and the guard
against on-policy iterations that form no pairs.

API:
  validate_llm_config(cfg, *, stages=(), data_parallel=1) -> None
      every field below, for the stages that will run (`stages`, default cfg.stage_order);
      raises ConfigError naming `config.<path>` (and the closest known name for unknown ones)
  check_context_fits(cfg, max_len, *, stages=()) -> None   prompt + response/new tokens fit
  check_paths(cfg, *, stages=()) -> None      every file the run reads exists and every data
                                              row parses (before loading or compiling)
  check_overrides(cfg, overrides) -> None     unknown `--config.a.b=...` keys, with a suggestion
  override_keys(argv) -> list[str]            the dotted keys of `--config.*` arguments
  count_pairs(rewards_PxN, valid_PxN) -> (pairs, non_tied_groups)   jit-able
  PairStarvation(max_consecutive)             .update(pairs, iteration): error after K
                                              consecutive iterations without a usable pair

Checks: stage names (stage_order, --stages, init, reward_model: known, earlier, of the right
kind), kind, algorithm (known, on-policy iff kind "onpolicy"), counts ≥ 1 (num_steps /
num_iterations, batch_size, prompts_per_iteration, minibatch_prompts, reuse,
accumulation_steps), batch sizes divisible by the data-parallel device count, prompts divisible
by minibatch_prompts, train_rows ≥ 0, learning_rate > 0, weight_decay ≥ 0, warmup shorter than
the run, sampling arguments (`modeseek._checks.check_sampling_args`), and configs that can never
form pairs: samples_per_prompt < 2 (every on-policy algorithm but the token-level ones, which
learn from a value baseline: `Algorithm.token_level`) or temperature 0. An on-policy stage needs
a training reward: its `reward_model` stage, or `cfg.reward` naming one (rule / fn / path), or a
gold reward (the fallback proxy of `llm.models.StageEnv.rewards`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from modeseek._checks import check_sampling_args, is_int, suggest_key
from modeseek.taxonomy import ALGORITHMS

KINDS = ("sft", "reward_model", "offline", "onpolicy")


class ConfigError(ValueError):
    """A config field that would fail, or silently do the wrong thing, later in the run."""


def _int_at_least(where: str, value, low: int) -> int:
    if not is_int(value) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
    return int(value)


def _known(where: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise ConfigError(f"{where}: unknown name {value!r}{suggest_key(value, known)}")


def _sampling(at: str, s: Mapping[str, Any]) -> None:
    try:
        check_sampling_args(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                            max_new_tokens=s["max_new_tokens"])
    except ValueError as e:
        raise ConfigError(f"{at}.{e}") from None


def total_updates(stage: Mapping[str, Any]) -> int:
    """Optimizer updates of a stage: num_steps, or for on-policy stages num_iterations × reuse ×
    (prompts_per_iteration / minibatch_prompts)."""
    if stage["kind"] == "onpolicy":
        return (stage["num_iterations"] * stage["reuse"]
                * (stage["prompts_per_iteration"] // stage["minibatch_prompts"]))
    return stage["num_steps"]


def _check_stage(name: str, s: Mapping[str, Any], earlier: Mapping[str, Any],
                 data_parallel: int, has_reward: bool = False) -> None:
    at = f"config.stages.{name}"
    _known(f"{at}.kind", s["kind"], KINDS)
    kind = s["kind"]
    if kind in ("offline", "onpolicy"):
        _known(f"{at}.algorithm", s["algorithm"], sorted(ALGORITHMS))
        if ALGORITHMS[s["algorithm"]].on_policy != (kind == "onpolicy"):
            raise ConfigError(f"{at}.algorithm: {s['algorithm']} is "
                              f"{'on-policy' if kind == 'offline' else 'offline'}; it needs "
                              f"kind={'onpolicy' if kind == 'offline' else 'offline'!r}")
    for field in ("init", "reward_model"):
        ref = s.get(field, "")
        if ref:
            _known(f"{at}.{field} (a stage that runs earlier)", ref, list(earlier))
    if s.get("reward_model") and earlier[s["reward_model"]]["kind"] != "reward_model":
        raise ConfigError(f"{at}.reward_model: stage {s['reward_model']!r} is of kind "
                          f"{earlier[s['reward_model']]['kind']!r}, not 'reward_model'")
    if kind == "onpolicy" and not s.get("reward_model") and not has_reward:
        raise ConfigError(f"{at}.reward_model: an on-policy stage needs a training reward: a "
                          "reward-model stage, config.reward (rule / fn / path) or a gold reward")
    count = "num_iterations" if kind == "onpolicy" else "num_steps"
    _int_at_least(f"{at}.{count} (0 would save untrained parameters as done)", s[count], 1)
    for field in ("accumulation_steps",) + (
            ("prompts_per_iteration", "minibatch_prompts", "reuse", "samples_per_prompt")
            if kind == "onpolicy" else ("batch_size",)):
        _int_at_least(f"{at}.{field}", s.get(field, 1), 1)
    _int_at_least(f"{at}.train_rows", s.get("train_rows", 0), 0)
    if kind == "onpolicy":
        if s["prompts_per_iteration"] % s["minibatch_prompts"]:
            raise ConfigError(f"{at}.prompts_per_iteration={s['prompts_per_iteration']} is not "
                              f"a multiple of minibatch_prompts={s['minibatch_prompts']}")
        batch_field, batch = "minibatch_prompts", s["minibatch_prompts"]
        _sampling(at, s)
        if not ALGORITHMS[s["algorithm"]].token_level and s["samples_per_prompt"] < 2:
            raise ConfigError(f"{at}.samples_per_prompt={s['samples_per_prompt']}: "
                              f"{s['algorithm']} compares samples of a prompt and needs >= 2 "
                              "(with 1 every update is zero)")
        if s.get("fuse_iteration", False) and s.get("trim_responses", True):
            raise ConfigError(f"{at}.fuse_iteration: one compiled iteration has fixed shapes, "
                              "so it cannot trim responses; set trim_responses=False too")
        if s["temperature"] == 0:
            raise ConfigError(f"{at}.temperature=0: greedy sampling gives identical samples, "
                              "so no pairs or advantages; use temperature > 0")
    else:
        batch_field, batch = "batch_size", s["batch_size"]
    if batch % data_parallel:
        raise ConfigError(f"{at}.{batch_field}={batch} is not a multiple of the "
                          f"{data_parallel} data-parallel devices (mesh data × fsdp)")
    lr, wd = s["learning_rate"], s.get("weight_decay", 0.0)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{at}.learning_rate must be > 0, got {lr!r}")
    if not (isinstance(wd, int | float) and math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"{at}.weight_decay must be >= 0, got {wd!r}")
    warmup = _int_at_least(f"{at}.warmup_steps", s.get("warmup_steps", 0), 0)
    if warmup >= total_updates(s):
        raise ConfigError(f"{at}.warmup_steps={warmup} >= the stage's {total_updates(s)} "
                          "optimizer updates: it would train at a fraction of learning_rate")


def validate_llm_config(cfg: Mapping[str, Any], *, stages: Sequence[str] = (),
                        data_parallel: int = 1) -> None:
    """Raise ConfigError on the first bad field of the stages that will run (see module doc).
    `data_parallel`: the number of devices a batch is split over (mesh data × fsdp)."""
    known = list(cfg["stages"].keys())
    order = list(cfg["stage_order"])
    for name in order:
        _known("config.stage_order", name, known)
    for name in stages:
        _known("--stages", name, order)
    run = [n for n in order if not stages or n in stages]
    reward = cfg.get("reward") or {}
    has_reward = bool(reward.get("fn") or reward.get("rule") or reward.get("path")
                      or cfg.get("gold"))
    for i, name in enumerate(order):
        s = cfg["stages"][name]
        if s.get("name", name) != name:
            raise ConfigError(f"config.stages.{name}.name is {s['name']!r}; it must be {name!r}")
        if name in run:
            _check_stage(name, s, {n: cfg["stages"][n] for n in order[:i]}, data_parallel,
                         has_reward)
    if "eval" in cfg:
        _int_at_least("config.eval.every", cfg["eval"].get("every", 0), 0)
        if cfg["eval"].get("every", 0):
            _sampling("config.eval", {"top_k": 0, "top_p": 1.0, **cfg["eval"]})
            _int_at_least("config.eval.batch_size", cfg["eval"].get("batch_size", 1), 1)
    if cfg.get("checkpoint_every", 0) < 0:
        raise ConfigError(f"config.checkpoint_every must be >= 0, got {cfg['checkpoint_every']}")


BUILTIN_MODELS = ("tiny", "smollm2")


def _missing(where: str, path: str, what: str) -> ConfigError:
    return ConfigError(f"{where}={path!r}: no such {what}; set {where} on the command line "
                       f"(--{where}=/path or gs://bucket/path)")


def _check_model_path(where: str, path: str) -> None:
    """A Hugging Face folder (config.json + model.safetensors or its shard index) or a .gguf
    file."""
    from etils import epath

    p = epath.Path(path)
    if path.endswith(".gguf"):
        if not p.is_file():
            raise _missing(where, path, "GGUF file")
        return
    if not p.is_dir():
        raise _missing(where, path, "Hugging Face folder (config.json + model.safetensors)")
    present = {c.name for c in p.iterdir()}
    if "config.json" not in present:
        raise ConfigError(f"{where}={path!r}: the folder has no config.json")
    if not present & {"model.safetensors", "model.safetensors.index.json"}:
        raise ConfigError(f"{where}={path!r}: the folder has no model.safetensors or "
                          "model.safetensors.index.json (pickle weights are never loaded)")


def _check_data_path(where: str, path: str, kind: str, skip_bad_rows: bool) -> None:
    """The file exists and every row parses as `kind` ("pairs" / "prompts"); a prepared
    TFDS folder is only checked to exist."""
    from etils import epath

    from llm.data.records import BadRowError, DataFileError, read_rows

    if epath.Path(path).is_dir():
        return
    if not epath.Path(path).is_file():
        raise _missing(where, path, "data file (.jsonl / .parquet) or prepared folder")
    try:
        _, stats = read_rows(path, kind=kind, skip_bad_rows=skip_bad_rows)
    except (BadRowError, DataFileError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if not stats["rows_kept"]:
        raise ConfigError(f"{where}={path!r}: no usable {kind} rows")


def check_paths(cfg: Mapping[str, Any], *, stages: Sequence[str] = ()) -> None:
    """Every path the stages that will run read: config.model, config.data.train (rows parsed
    as pairs, or as prompts when only on-policy stages run), config.data.test (when evaluation
    is on; pairs when a reward-model stage runs) and the `path` of every model / hf_model
    reward in config.reward and config.gold. Raises ConfigError naming the first field that
    is missing or does not parse; local and object-store (gs://) paths alike (etils.epath)."""
    from etils import epath

    if cfg["model"] not in BUILTIN_MODELS:
        _check_model_path("config.model", cfg["model"])
    kinds = {cfg["stages"][n]["kind"] for n in (stages or cfg["stage_order"])}
    data, skip = cfg["data"], bool(cfg["data"].get("skip_bad_rows", False))
    _check_data_path("config.data.train", data["train"],
                     "prompts" if kinds == {"onpolicy"} else "pairs", skip)
    if cfg.get("eval", {}).get("every", 0):
        _check_data_path("config.data.test", data["test"],
                         "pairs" if "reward_model" in kinds else "prompts", skip)
    rewards = {"config.reward": cfg.get("reward") or {}}
    rewards.update({f"config.gold.{k}": v for k, v in (cfg.get("gold") or {}).items()})
    for where, spec in rewards.items():
        if spec.get("fn") or spec.get("kind") not in ("model", "hf_model"):
            continue
        if not spec.get("path"):  # an unset proxy (config.reward) is simply not used
            if where == "config.reward":
                continue
            raise ConfigError(f"{where}.path: a {spec['kind']} reward needs a path")
        if spec["kind"] == "hf_model":
            _check_model_path(f"{where}.path", spec["path"])
        elif not epath.Path(spec["path"]).is_dir():
            raise _missing(f"{where}.path", spec["path"], "run stage folder (<workdir>/<stage>)")


def check_context_fits(cfg: Mapping[str, Any], max_len: int, *, stages: Sequence[str] = ()
                       ) -> None:
    """Once the model is known: every sequence a stage builds fits its context of max_len
    tokens — data.max_prompt_len + data.max_response_len (preference stages),
    data.max_prompt_len + max_new_tokens (on-policy stages, evaluation)."""
    p = cfg["data"]["max_prompt_len"]
    need = {"config.data.max_response_len": cfg["data"]["max_response_len"]}
    if cfg.get("eval", {}).get("every", 0):
        need["config.eval.max_new_tokens"] = cfg["eval"]["max_new_tokens"]
    for name in stages or cfg["stage_order"]:
        if cfg["stages"][name]["kind"] == "onpolicy":
            need[f"config.stages.{name}.max_new_tokens"] = cfg["stages"][name]["max_new_tokens"]
    for where, n in need.items():
        if p + n > max_len:
            raise ConfigError(f"config.data.max_prompt_len={p} + {where}={n} exceeds the "
                              f"model's context of {max_len} tokens")


def check_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """`overrides`: dotted keys given on the command line (`stages.dpo.learning_rate`); the
    first unknown one raises ConfigError with the closest known key at its level."""
    for dotted in overrides:
        node, path = cfg, []
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                keys = list(node.keys()) if isinstance(node, Mapping) else []
                where = "config" + "".join(f".{p}" for p in path)
                raise ConfigError(f"--config.{dotted}: {where} has no field {part!r}"
                                  f"{suggest_key(part, keys)}")
            node, path = node[part], path + [part]


def override_keys(argv: Sequence[str], flag: str = "config") -> list[str]:
    """Dotted keys of `--config.a.b=v` / `--config.a.b v` arguments in `argv` (to check with
    `check_overrides` before absl parses them and fails with a traceback)."""
    prefix = f"--{flag}."
    return [a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)]


def count_pairs(rewards_PxN, valid_PxN):
    """(pairs, non_tied_groups): unordered sample pairs (i < j) of a prompt, both valid, with
    different rewards — what a pairwise objective can learn from — and the number of prompts
    with at least one such pair. Pure and jit-able; int32 scalars."""
    r_PxN = jnp.asarray(rewards_PxN, jnp.float32)
    v_PxN = jnp.asarray(valid_PxN, bool)
    n = r_PxN.shape[-1]
    upper_NxN = jnp.triu(jnp.ones((n, n), bool), k=1)
    usable_PxNxN = (v_PxN[:, :, None] & v_PxN[:, None, :] & upper_NxN
                    & (r_PxN[:, :, None] != r_PxN[:, None, :]))
    per_prompt_P = usable_PxNxN.sum((1, 2), dtype=jnp.int32)
    return per_prompt_P.sum(dtype=jnp.int32), (per_prompt_P > 0).sum(dtype=jnp.int32)


class PairStarvation:
    """Counts consecutive iterations with zero usable pairs; the `max_consecutive`-th raises
    ConfigError (the run cannot learn: all samples tie or are invalid). 0 disables."""

    def __init__(self, max_consecutive: int = 3):
        self.max_consecutive = _int_at_least("max_zero_pair_iterations", max_consecutive, 0)
        self.consecutive = 0

    def update(self, pairs: int, iteration: int) -> None:
        self.consecutive = 0 if int(pairs) > 0 else self.consecutive + 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise ConfigError(f"iteration {iteration}: {self.consecutive} consecutive "
                              "iterations formed no usable pair (every sample of every prompt "
                              "tied or was invalid); raise the temperature, samples_per_prompt "
                              "or max_new_tokens")
