"""llm.report: the §5 Min Length verdict read off eval-length curves (hand-made metrics)."""

import json

import numpy as np

from configs.llm import get_config
from llm import report


def _write(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_steps_to_reach():
    pts = np.array([[0, 60.0], [10, 40.0], [20, 29.0], [30, 31.0]])
    assert report.steps_to_reach(pts, 30.0) == 20.0
    assert report.steps_to_reach(pts, 10.0) is None


def test_min_length_verdict_from_the_curves(tmp_path):
    cfg = get_config("tiny")  # on-policy: 4 prompts, minibatch 4, reuse 1 -> 1 step/iteration
    _write(tmp_path / "onpolicy_dpo", [{"step": 0, "eval/length": 60.0},
                                       {"step": 10, "eval/length": 25.0},
                                       {"step": 20, "eval/length": 5.0}])
    _write(tmp_path / "offline_dpo", [{"step": 0, "eval/length": 62.0},
                                      {"step": 10, "eval/length": 50.0},
                                      {"step": 20, "eval/length": 30.0}])
    text = (tmp_path / "report.md")
    report.write_report(str(tmp_path), cfg)
    md = text.read_text()
    assert ("falls to 10% of its start in 20 steps on-policy vs never offline (to half: 10 "
            "steps vs 20 steps); final eval length 5.0 (on-policy) vs 30.0 (offline) — **held**"
            ) in md
    _write(tmp_path / "pref_ft", [{"step": 0, "eval/length": 61.0}])
    (tmp_path / "offline_dpo" / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "eval/length": 62.0}) + "\n"
        + json.dumps({"step": 5, "eval/length": 3.0}) + "\n")
    report.write_report(str(tmp_path), cfg)
    md = text.read_text()
    assert "in 20 steps on-policy vs 5 steps offline" in md and "**did not hold**" in md
    assert "Pref-FT (no negative gradient) ends at 61.0 tokens." in md
