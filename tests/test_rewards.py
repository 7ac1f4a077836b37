"""Rewards as data: the rule rewards (`modeseek.rewards`, jit-able, and `llm.rewards`) equal a
plain Python computation on the decoded text / tokens; user functions by import path in TRL's
convention; configs; and every bad input fails with a message naming the reward and the cause."""

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import reward_fns

import modeseek
from llm import rewards
from llm.byte_tokenizer import ByteTokenizer
from llm.safetensors_io import CheckpointError

TOK = ByteTokenizer()
PROMPTS = ["Q: 6*7?", "What is 1000+234? ", "hi"]
COMPLETIONS = [["so #### 42", "#### 41\nbye"],
               ["#### 1,234.", "it is 1234"],
               ["a banana", "#### 5 #### 4 and a long tail that gets cut at the end"]]
LR = 24  # responses longer than LR − 1 bytes lose their EOS (a truncated sample)


def make_inputs(prompts=PROMPTS, completions=COMPLETIONS, *, text=True, columns=None):
    """Byte-tokenised batch: prompts left-padded, responses encode(text) + [EOS] right-padded
    and cut at LR tokens, as the sampler and the data pipeline lay them out."""
    lp = max(len(TOK.encode(p)) for p in prompts)
    P, N = len(completions), len(completions[0])
    prompt_tokens = np.full((P, lp), TOK.pad_id, np.int32)
    prompt_mask = np.zeros((P, lp), bool)
    response_tokens = np.full((P, N, LR), TOK.pad_id, np.int32)
    response_mask = np.zeros((P, N, LR), bool)
    for p, prompt in enumerate(prompts):
        ids = TOK.encode(prompt)
        prompt_tokens[p, lp - len(ids):] = ids
        prompt_mask[p, lp - len(ids):] = True
        for n, completion in enumerate(completions[p]):
            ids = (TOK.encode(completion) + [TOK.eos_id])[:LR]
            response_tokens[p, n, :len(ids)] = ids
            response_mask[p, n, :len(ids)] = True
    return rewards.RewardInputs(prompt_tokens, prompt_mask, response_tokens, response_mask,
                                prompts if text else None, completions if text else None,
                                columns)


def plain_lengths():
    """len(y) from the text: its bytes plus EOS, at most LR (EOS counted as the data does)."""
    return np.array([[min(len(c.encode()) + 1, LR) for c in row] for row in COMPLETIONS])


# ----------------------------------------------------------------------------- modeseek


def test_length_rewards_hand_computed_under_jit():
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(jax.jit(modeseek.negative_length)(mask), [-3.0, -1.0, 0.0])
    distance = jax.jit(modeseek.negative_length_distance)(mask, 2)
    np.testing.assert_array_equal(distance, [-1.0, -1.0, -2.0])
    assert distance.dtype == jnp.float32


def test_length_rewards_any_leading_shape_match_numpy_and_vmap_over_mode():
    mask = np.random.default_rng(0).random((2, 3, 4, 7)) < 0.6
    lengths = mask.sum(-1).astype(np.float32)
    np.testing.assert_array_equal(modeseek.negative_length(mask), -lengths)
    np.testing.assert_array_equal(modeseek.negative_length_distance(mask, 2.5),
                                  -np.abs(lengths - 2.5))
    modes = jnp.array([0.0, 3.0, 6.0])
    swept = jax.jit(jax.vmap(modeseek.negative_length_distance, in_axes=(None, 0)))(mask, modes)
    for i, mode in enumerate([0.0, 3.0, 6.0]):
        np.testing.assert_array_equal(swept[i], -np.abs(lengths - mode))


def test_pooling_index_hand_computed_and_brute_force():
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    tokens = jnp.array([[9, 5, 6, 9], [5, 6, 7, 0], [1, 2, 3, 4], [0, 0, 0, 0]])
    np.testing.assert_array_equal(jax.jit(modeseek.pooling_index)(mask), [2, 3, 0, 3])
    pooled = jax.jit(modeseek.pooling_index, static_argnums=2)(mask, tokens, 0)
    np.testing.assert_array_equal(pooled, [2, 2, 0, 0])  # a trailing pad id is skipped
    values = jnp.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(modeseek.pool_at_last_token(values, mask, tokens, 0),
                                  [2.0, 6.0, 8.0, 12.0])
    rng = np.random.default_rng(5)
    mask, tokens = rng.random((50, 9)) < 0.5, rng.integers(0, 3, (50, 9))
    for pad_id in (None, 0):
        valid = mask & (tokens != pad_id) if pad_id is not None else mask
        expected = [max([t for t in range(9) if row[t]], default=0) for row in valid]
        np.testing.assert_array_equal(modeseek.pooling_index(mask, tokens, pad_id), expected)


# ----------------------------------------------------------------------------- rules


def test_length_rules_equal_plain_python_on_text():
    inputs = make_inputs(text=False)
    neg = rewards.build_reward(rewards.reward_config("rule", rule="neg_length"))
    np.testing.assert_array_equal(neg(inputs), -plain_lengths())
    assert plain_lengths().max() == LR  # one truncated response: the cap counts, no EOS
    dist = rewards.build_reward(dict(kind="rule", rule="neg_length_distance", mode=10))
    np.testing.assert_array_equal(dist(inputs), -np.abs(plain_lengths() - 10))
    assert (neg.name, neg.needs_text, dist.name) == ("neg_length", False, "neg_length_distance")
    on_device = jax.jit(dist.response_fn)(jnp.asarray(inputs.response_mask))
    np.testing.assert_array_equal(on_device, -np.abs(plain_lengths() - 10))


def plain_gsm8k(completion, reference):
    """OpenAI's GSM8K grading (grade_school_math/dataset.py), numbers compared as floats."""
    answer_re = re.compile(r"#### (\-?[0-9\.\,]+)")

    def extract(text):
        found = answer_re.search(text)
        return found.group(1).strip().replace(",", "").rstrip(".") if found else None

    got, want = extract(completion), extract(reference) if "####" in reference else reference
    return float(got is not None and float(got) == float(want))


def test_gsm8k_answer_extraction_hand_cases():
    from llm.reward_text import answers_match, extract_answer

    cases = {"so #### $1,000.": "1000", "#### -3 then #### 4": "-3", "####42": "42",
             "the answer is 42": None, "#### none": None, "#### 0.50\n": "0.50"}
    assert {text: extract_answer(text) for text in cases} == cases
    assert answers_match("0.50", "0.5") and answers_match("7", "7.0")
    assert not answers_match("7", "8") and not answers_match(None, "7")


def test_exact_match_equals_plain_python_for_every_reference_source(tmp_path):
    answers = ["42", "Roughly... #### 1234", "5"]
    expected = np.array([[plain_gsm8k(c, a) for c in row] for row, a in zip(COMPLETIONS, answers)])
    np.testing.assert_array_equal(expected, [[1, 0], [1, 0], [0, 1]])  # the check has teeth
    path = tmp_path / "refs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n"
                            for p, a in zip(PROMPTS, answers)))
    specs = {"list": dict(references=[[p, a] for p, a in zip(PROMPTS, answers)]),
             "dicts": dict(references=[{"prompt": p, "answer": a}
                                       for p, a in zip(PROMPTS, answers)]),
             "jsonl": dict(path=str(path))}
    for source, fields in specs.items():
        reward = rewards.build_reward(rewards.reward_config("rule", rule="exact_match", **fields))
        np.testing.assert_array_equal(reward(make_inputs()), expected, err_msg=source)
    # a dataset column wins; text decoded from tokens; a chat template around the prompt
    by_column = rewards.build_reward(dict(kind="rule", rule="exact_match"), tokenizer=TOK)
    got = by_column(make_inputs(text=False, columns={"answer": answers}))
    np.testing.assert_array_equal(got, expected)
    wrapped = [f"<|user|>\n{p}<|end|>\n<|assistant|>" for p in PROMPTS]
    reward = rewards.build_reward(dict(kind="rule", rule="exact_match", path=str(path)))
    np.testing.assert_array_equal(reward(make_inputs(wrapped)), expected)


@pytest.mark.parametrize("rule, pattern, check", [
    ("regex", r"#### \d+", lambda p, c: re.search(r"#### \d+", c) is not None),
    ("format", r"#### [\d,.]+", lambda p, c: re.fullmatch(r"#### [\d,.]+", c) is not None),
    ("format", r"(?s).*bye", lambda p, c: c.endswith("bye")),
])
def test_regex_and_format_rules_equal_plain_python(rule, pattern, check):
    reward = rewards.build_reward(dict(kind="rule", rule=rule, pattern=pattern), tokenizer=TOK)
    expected = [[float(check(p, c)) for c in row] for p, row in zip(PROMPTS, COMPLETIONS)]
    assert 0 < np.sum(expected) < np.size(expected)
    np.testing.assert_array_equal(reward(make_inputs(text=False)), expected)
    assert reward.needs_text and reward.last_seconds > 0


def test_decoded_inputs_equal_the_texts():
    decoded = rewards.decode_inputs(make_inputs(text=False), TOK)
    assert decoded.prompts == PROMPTS
    assert decoded.completions[0] == COMPLETIONS[0]
    assert decoded.completions[2][1] == COMPLETIONS[2][1][:LR]  # cut at LR tokens


# ----------------------------------------------------------------------------- user functions


def test_user_function_by_import_path_in_trl_convention():
    reward_fns.CALLS.clear()
    reward = rewards.build_reward(dict(kind="rule", fn="reward_fns:count_a"),
                                  tokenizer=TOK)
    assert (reward.kind, reward.name, reward.needs_text) == ("fn", "count_a", True)
    got = reward(make_inputs(text=False, columns={"level": [1, 2, 3]}))
    seen = [[c[:LR] for c in row] for row in COMPLETIONS]  # decoded: cut at LR tokens
    expected = [[c.count("a") - 0.1 * len(p) for c in row] for p, row in zip(PROMPTS, seen)]
    np.testing.assert_allclose(got, np.float32(expected))
    assert got.dtype == np.float32 and got.shape == (3, 2)
    (call,) = reward_fns.CALLS
    assert call["prompts"] == [p for p in PROMPTS for _ in range(2)]
    assert call["completions"] == [c for row in seen for c in row]
    assert call["level"] == [1, 1, 2, 2, 3, 3]
    assert call["completion_ids"][0] == TOK.encode(COMPLETIONS[0][0]) + [TOK.eos_id]
    assert reward.last_seconds > 0
    by_file = rewards.build_reward(dict(fn=f"{reward_fns.__file__}:count_a"), tokenizer=TOK)
    np.testing.assert_allclose(by_file(make_inputs(text=False)), np.float32(expected))
    lazy = rewards.build_reward(dict(fn="reward_fns:lazy_lengths"))
    np.testing.assert_array_equal(lazy(make_inputs()), [[len(c) for c in r] for r in COMPLETIONS])
    column = rewards.build_reward(dict(kind="fn", fn="reward_fns:answer_in_completion"))
    got = column(make_inputs(columns={"answer": ["42", "1234", "banana"]}))
    np.testing.assert_array_equal(got, [[1, 0], [0, 1], [1, 0]])


@pytest.mark.parametrize("fn, message", [
    ("reward_fns_nowhere:score", "cannot import module 'reward_fns_nowhere': No module"),
    ("no_such_pkg.rewards:score", "cannot import module 'no_such_pkg.rewards': No module"),
    ("tests/no_such_file.py:score", "importing module 'tests/no_such_file.py' failed: "
                                    "FileNotFoundError: no file tests/no_such_file.py"),
    ("reward_fns_missing_dep:score", "imports 'modeseek_no_such_dependency', which is"),
    ("reward_fns:no_such_fn", "has no attribute 'no_such_fn'"),
    ("reward_fns:NOT_CALLABLE", "not callable"),
    ("reward_fns.count_a", "not of the form 'package.module:function'"),
])
def test_import_errors_name_the_path_and_the_cause(fn, message):
    with pytest.raises(rewards.RewardError, match=re.escape(message)) as info:
        rewards.build_reward(dict(kind="fn", fn=fn, name="judge"))
    assert "'judge'" in str(info.value) and fn in str(info.value)


@pytest.mark.parametrize("fn, message", [
    ("one_short", "returned 5 values of shape (5,), expected 6"),
    ("with_nan", "1 non-finite values, first nan at prompt 0, sample 0"),
    ("with_none", "returned None"),
    ("raises", "raised RuntimeError: the verifier crashed"),
])
def test_bad_function_results_raise_reward_error_naming_the_reward(fn, message):
    reward = rewards.build_reward(dict(kind="fn", fn=f"reward_fns:{fn}", name="judge"))
    with pytest.raises(rewards.RewardError, match=re.escape(message)) as info:
        reward(make_inputs())
    assert "reward 'judge'" in str(info.value)


# ----------------------------------------------------------------------------- configs


def test_config_fields_overrides_and_unknown_names():
    cfg = rewards.reward_config("rule", rule="neg_length")
    cfg.lock()
    cfg.fn = "reward_fns:count_a"  # what --config.reward.fn=... does
    assert rewards.build_reward(cfg).kind == "fn"
    with pytest.raises(AttributeError):
        cfg.functon = "x"
    with pytest.raises(ValueError, match="unknown fields \\['rul'\\]; known: .*'rule'"):
        rewards.reward_config("rule", rul="neg_length")
    with pytest.raises(rewards.RewardError, match="known kinds: rule, fn, model, hf_model"):
        rewards.build_reward(dict(kind="verifier"))
    with pytest.raises(rewards.RewardError, match="known rules: neg_length, neg_length_dist"):
        rewards.build_reward(dict(kind="rule", rule="min_length"))
    with pytest.raises(rewards.RewardError, match="needs mode >= 0"):
        rewards.build_reward(dict(kind="rule", rule="neg_length_distance"))
    with pytest.raises(rewards.RewardError, match="not a valid regular expression"):
        rewards.build_reward(dict(kind="rule", rule="regex", pattern="(unclosed"))
    with pytest.raises(rewards.RewardError, match="unknown fields \\['rul'\\]; known: "):
        rewards.build_reward(dict(kind="rule", rul="neg_length"))
    short = make_inputs()._replace(completions=[row[:1] for row in COMPLETIONS])
    with pytest.raises(rewards.RewardError, match="per prompt \\[1, 1, 1\\] do not match the "
                                                  "tokens' P=3, N=2"):
        rewards.build_reward(dict(kind="rule", rule="regex", pattern="a"))(short)
    with pytest.raises(rewards.RewardError, match="reads text: pass RewardInputs.prompts"):
        rewards.build_reward(dict(kind="rule", rule="regex", pattern="a"))(make_inputs(text=False))


def test_build_rewards_names_golds_by_their_keys(tmp_path):
    golds = ml_collections.ConfigDict()  # as a config holds them
    golds.neg_length = rewards.reward_config("rule", rule="neg_length")
    golds.mode8 = rewards.reward_config("rule", rule="neg_length_distance", mode=8)
    golds.named = rewards.reward_config("rule", rule="neg_length", name="len")
    golds.lock()
    golds.mode8.mode = 7.5  # a command-line override
    golds.mode8.mode = 8
    proxy, golds = rewards.build_rewards(dict(kind="fn", fn="reward_fns:count_a"), golds)
    assert proxy.name == "count_a"
    assert {k: g.name for k, g in golds.items()} == {"neg_length": "neg_length",
                                                    "mode8": "mode8", "named": "len"}
    np.testing.assert_array_equal(golds["mode8"](make_inputs()), -np.abs(plain_lengths() - 8))
    assert rewards.build_rewards(None, {}) == (None, {})


def test_missing_checkpoints_and_bad_reference_files_name_the_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    for kind in ("model", "hf_model"):
        with pytest.raises(CheckpointError, match=re.escape(missing)):
            rewards.build_reward(dict(kind=kind, path=missing))
        with pytest.raises(rewards.RewardError, match="needs `path`"):
            rewards.build_reward(dict(kind=kind))
    with pytest.raises(rewards.RewardError, match="refs.jsonl: reference file missing"):
        rewards.build_reward(dict(kind="rule", rule="exact_match", path=str(tmp_path /
                                                                            "refs.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    with pytest.raises(rewards.RewardError, match="bad.jsonl:2: field 'answer' missing"):
        rewards.build_reward(dict(kind="rule", rule="exact_match", path=str(bad)))
    reward = rewards.build_reward(dict(kind="rule", rule="exact_match", references=[["x", "1"]]))
    with pytest.raises(rewards.RewardError, match="no reference answer for prompt 'Q: 6"):
        reward(make_inputs())
