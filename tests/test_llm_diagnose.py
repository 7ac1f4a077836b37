"""`python -m llm.diagnose` (its `main`, in process) on the tiny random byte-level model:
report, scatter plot and measures written; the measures equal modeseek.diagnose_samples on the
saved samples; bad arguments fail before any model loads, naming the flag, file and line."""

import json
import os

import numpy as np
import pytest

import modeseek
from llm import diagnose


def _cli(capsys, *args):
    """Run the CLI in this process: (exit code, stderr)."""
    try:
        code = diagnose.main(list(args))
    except SystemExit as e:  # argparse's error exit
        code = e.code
    return code, capsys.readouterr().err


def test_tiny_model_end_to_end(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps(dict(prompt=f"q{i}", chosen="a" * i, rejected="bb"))
                              for i in range(1, 4)) + "\n")
    out = tmp_path / "diag"
    # the random byte model rarely emits EOS, so score the decoded text's length instead
    code, err = _cli(capsys, "--model", "tiny", "--reward", "fn:tests.reward_fns:lazy_lengths",
                     "--prompt", "hello", "--prompt", "world", "--samples", "6",
                     "--max-new-tokens", "6", "--data", str(data), "--out", str(out))
    assert code == 0, err[-3000:]
    saved = json.loads((out / "diagnose.json").read_text())
    logp, rewards = np.array(saved["logp"]), np.array(saved["rewards"])
    assert logp.shape == rewards.shape == (2, 6) and np.all(logp <= 0)
    assert np.all(rewards >= 0) and np.std(rewards) > 0  # characters of ≤ 6 random bytes
    scaled = (rewards - rewards.min()) / (rewards.max() - rewards.min())
    varies = np.ptp(rewards, axis=1) > 0
    want = modeseek.diagnose_samples(logp[varies], scaled[varies], beta=0.1)
    assert saved["measures"]["prompts_used"] == varies.sum() >= 1
    assert 0 <= saved["measures"]["truncated_fraction"] <= 1
    for key, value in want.items():
        np.testing.assert_allclose(saved["measures"][key], np.nanmedian(np.asarray(value)),
                                   rtol=1e-5, err_msg=key)
    assert {"ks", "overlap"} <= set(saved["measures"])
    report = (out / "report.md").read_text()
    assert f"**Recommendation: {saved['recommendation']}**" in report
    assert os.path.getsize(out / "scatter.png") > 0
    code, err = _cli(capsys, "--model", "tiny", "--reward", "neg_length", "--prompt", "x",
                     "--out", str(out))
    assert code != 0 and "never overwritten" in err


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    code, err = _cli(capsys, "--model", "tiny", "--reward", "bogus:x", "--prompt", "a", "--out",
                     str(tmp_path / "o"))
    assert code != 0 and "--reward 'bogus:x'" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    code, err = _cli(capsys, "--model", "tiny", "--reward", "neg_length", "--prompts", str(bad),
                     "--out", str(tmp_path / "o"))
    assert code != 0 and f"{bad}:2" in err and "prompt" in err
    assert not (tmp_path / "o").exists()


def test_reward_spec_kinds():
    assert diagnose.reward_spec("neg_length").rule == "neg_length"
    spec = diagnose.reward_spec("rule:neg_length_distance:7")
    assert (spec.kind, spec.rule, spec.mode) == ("rule", "neg_length_distance", 7.0)
    assert diagnose.reward_spec("fn:tests.reward_fns:count_a").fn == "tests.reward_fns:count_a"
    assert diagnose.reward_spec("model:/some/path").path == "/some/path"


def test_measures_skip_prompts_whose_reward_is_constant():
    rng = np.random.default_rng(0)
    logp = rng.normal(-50, 10, (3, 8))
    rewards = np.stack([np.full(8, -48.0), rng.normal(size=8), rng.normal(size=8)])
    got = diagnose.measures(logp, rewards, beta=0.1)
    scaled = (rewards - rewards.min()) / np.ptp(rewards)
    want = modeseek.diagnose_samples(logp[1:], scaled[1:], beta=0.1)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], np.median(np.asarray(value)), rtol=1e-5)
    assert got["prompts_used"] == 2
    with pytest.raises(ValueError, match="constant over every prompt"):
        diagnose.measures(logp, np.full((3, 8), -48.0), beta=0.1)
