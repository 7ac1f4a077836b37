"""The geometry map: a tiny map end to end, the per-geometry verdict and the accuracy of the
recommendation on constructed tables, and config validation."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from bandits import env, geometry, geometry_report
from configs import bandits as bandit_config

INF = math.inf


def _tiny():
    c = bandit_config.get_config("geometry")
    c.unlock()
    c.policy = "tabular"
    c.num_steps = 10
    c.offline_prompts = 10
    c.chunk_size = 2
    c.devices = 1
    c.geometry.peaks = (20, 70)
    c.geometry.widths = (10.0,)
    c.geometry.methods = ("onpolicy_ipo", "onpolicy_bofn", "offline_ipo", "offline_bofn")
    c.geometry.seeds = 1
    return c


def test_tiny_map_end_to_end(tmp_path):
    config = _tiny()
    geometry_report.main(config, str(tmp_path), time.perf_counter(), time.process_time(), 0.0)
    for name in ("map.png", "gains.png", "report.md", "results.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 2 * 4 * 1
    rows = results["geometries"]
    assert [(r["peak"], r["width"]) for r in rows] == [(20, 10.0), (70, 10.0)]
    # The exact diagnostic at β = 0.1: R2's geometry is aligned, R1's is not.
    assert [r["predicted"] for r in rows] == ["offline_adequate", "onpolicy_negative"]
    assert rows[0]["diagnose"]["ref_peak"] == pytest.approx(env.reference_policy()[20])
    # Each row's best final reward is the max of its methods' medians, and the report says
    # the accuracy it computed.
    for r in rows:
        assert r["best_final"] == pytest.approx(max(r["final"].values()))
    acc = results["accuracy"]
    assert f"{acc['correct']} of 2 geometries" in (tmp_path / "report.md").read_text()
    # Re-rendering the saved run folder gives the same report without re-running.
    (tmp_path / "again").mkdir()
    geometry_report.rerender(config, str(tmp_path), str(tmp_path / "again"))
    assert ((tmp_path / "again" / "report.md").read_text()
            == (tmp_path / "report.md").read_text())


def _row(final, steps=None, predicted="offline_adequate"):
    steps = steps or {k: 50.0 for k in final}
    return geometry.geometry_row(final, steps, predicted)


def test_geometry_row_on_constructed_numbers():
    # Offline within 0.02 of the best: offline adequate; winner = fewest steps among the near.
    r = _row({"onpolicy_ipo": 1.0, "onpolicy_bofn": 0.99, "offline_dpo": 0.985,
              "offline_bofn": 0.9},
             {"onpolicy_ipo": 30.0, "onpolicy_bofn": 20.0, "offline_dpo": 10.0,
              "offline_bofn": INF})
    assert r["measured"] == "offline_adequate" and r["winner"] == "offline_dpo"
    assert r["correct"] and r["regret"] == pytest.approx(0.015) and r["winner_in_class"]
    assert r["steps_regret"] == 0 and not r["offline_no_negative_adequate"]
    assert r["onpolicy_gain"] == pytest.approx(0.015)
    assert r["neg_gain_onpolicy"] == pytest.approx(0.01)
    assert r["neg_gain_steps_onpolicy"] == pytest.approx(-10.0)  # bofn 20 vs ipo 30 steps
    assert r["neg_gain_offline"] == pytest.approx(0.085)
    # Offline far behind: on-policy + negative gradient; following "offline" leaves 0.7.
    r = _row({"onpolicy_ipo": 0.99, "onpolicy_bofn": 0.5, "offline_dpo": 0.29,
              "offline_bofn": 0.3})
    assert r["measured"] == "onpolicy_negative" and not r["correct"]
    assert r["regret"] == pytest.approx(0.69) and not r["missed_saving"]
    assert not r["winner_in_class"] and r["steps_regret"] == INF
    # Only the on-policy cell without a negative gradient reaches the top.
    r = _row({"onpolicy_ipo": 0.6, "onpolicy_bofn": 0.99, "offline_dpo": 0.3,
              "offline_bofn": 0.3}, predicted="onpolicy_negative")
    assert r["measured"] == "onpolicy_no_negative" and r["regret"] == pytest.approx(0.39)
    # On-policy recommended where offline was adequate: correct reward, a missed saving.
    r = _row({"onpolicy_ipo": 1.0, "onpolicy_bofn": 1.0, "offline_dpo": 1.0,
              "offline_bofn": 1.0},
             {"onpolicy_ipo": 30.0, "onpolicy_bofn": 20.0, "offline_dpo": 25.0,
              "offline_bofn": 40.0}, predicted="onpolicy_negative")
    assert r["missed_saving"] and r["regret"] == 0 and not r["correct"]
    assert r["winner"] == "onpolicy_bofn" and r["steps_regret"] == 10.0
    assert r["offline_no_negative_adequate"]


def test_accuracy_on_a_constructed_table():
    rows = [dict(correct=True, regret=0.0, predicted="offline_adequate",
                 measured="offline_adequate", missed_saving=False, winner_in_class=False),
            dict(correct=False, regret=0.5, predicted="offline_adequate",
                 measured="onpolicy_negative", missed_saving=False, winner_in_class=False),
            dict(correct=False, regret=0.0, predicted="onpolicy_negative",
                 measured="offline_adequate", missed_saving=True, winner_in_class=True),
            dict(correct=True, regret=0.01, predicted="onpolicy_negative",
                 measured="onpolicy_negative", missed_saving=False, winner_in_class=True)]
    acc = geometry.accuracy(rows)
    assert (acc["n"], acc["correct"], acc["accuracy"]) == (4, 2, 0.5)
    assert acc["winner_in_class"] == 2
    assert acc["regret_median"] == pytest.approx(0.005) and acc["regret_max"] == 0.5
    assert acc["regret_over_margin"] == 1 and acc["missed_savings"] == 1
    assert acc["confusion"] == {("offline_adequate", "offline_adequate"): 1,
                                ("offline_adequate", "onpolicy_negative"): 1,
                                ("onpolicy_negative", "offline_adequate"): 1,
                                ("onpolicy_negative", "onpolicy_negative"): 1}
    with pytest.raises(ValueError, match="at least one"):
        geometry.accuracy([])


@pytest.mark.parametrize("field,value,match", [
    ("peaks", (20, 100), "geometry.peaks"),
    ("widths", (0.0,), "geometry.widths"),
    ("methods", ("onpolicy_ipo", "offline_ipo"), "2×2"),
    ("methods", ("onpolicy_ipo", "onpolicy_bofn", "offline_ipo", "offlin_bofn"),
     "geometry.methods"),
    ("seeds", 0, "geometry.seeds"),
])
def test_validate_names_the_field(field, value, match):
    c = _tiny()
    c.geometry[field] = value
    with pytest.raises(ValueError, match=match):
        geometry.validate(c)


def test_default_geometry_config_is_valid_and_covers_the_2x2():
    c = bandit_config.get_config("geometry")
    geometry.validate(c)
    assert len(geometry.geometries(c)) == 40 and c.geometry.seeds >= 5
    c = _tiny()
    c.geometry.learning_rates.offline_ipo = -1.0
    with pytest.raises(ValueError, match="learning_rates.offline_ipo"):
        geometry.validate(c)


def test_cli_routes_the_geometry_config(tmp_path):
    """`python -m bandits --config=configs/bandits.py:geometry` takes the geometry branch: its
    own validation names the geometry field before anything compiles."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bandits", "--config=configs/bandits.py:geometry",
                           "--config.geometry.seeds=0", f"--out={tmp_path / 'run'}"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config.geometry.seeds: must be an integer >= 1, got 0" in proc.stderr
    assert not (tmp_path / "run").exists()
