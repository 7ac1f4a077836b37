"""python -m synthetic [--quick] [--config=configs/synthetic.py[:token_bandit]] [--out DIR]
   python -m synthetic --render --out DIR

Runs a synthetic study and writes DIR/{config.json, results.json, metrics.jsonl, *.png,
report.md}; reference and reward models are cached in DIR/../synthetic-cache. With --render,
rewrites a finished run folder's report.md and plots from its saved files (no training).
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

import configs
from configs import synthetic as synthetic_config
from modeseek._checks import check_new_run_folder
from synthetic import plots, report, study

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "synthetic.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Study configuration.")
_OUT = flags.DEFINE_string("out", None, "Run folder (default: runs/synthetic-<time>).")
_QUICK = flags.DEFINE_bool("quick", False, "Use the config's quick variant (< 2 minutes).")
_RENDER = flags.DEFINE_bool("render", False, "Only rewrite --out's report.md and plots.")


def _print(rows, rm_rows):
    for finding, best, matched, evidence in rows:
        print(f"[best lr: {best} | matched lr: {matched}] {finding}\n    {evidence}")
    for finding, verdict, evidence in rm_rows:
        print(f"[{verdict}] {finding}\n    {evidence}")


def main(argv):
    del argv
    if _RENDER.value:
        if not _OUT.value or not os.path.exists(os.path.join(_OUT.value, "results.json")):
            sys.exit(f"error: --render needs --out=DIR holding a finished run (results.json); "
                     f"got {_OUT.value!r}")
        _print(*report.render(_OUT.value))
        print(f"report: {os.path.join(_OUT.value, 'report.md')}")
        return
    config = _CONFIG.value
    if _QUICK.value:
        config = synthetic_config.get_config(
            "token_quick" if config.study == "token_bandit" else "quick")
    study.validate(config)
    out = _OUT.value or os.path.join("runs", time.strftime("synthetic-%Y%m%d-%H%M%S"))
    try:
        check_new_run_folder(out)
    except FileExistsError as e:
        sys.exit(f"error: {e}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    cache = os.path.join(os.path.dirname(os.path.abspath(out)), "synthetic-cache")
    records, curves, info = study.run_study(config, cache, show_progress=sys.stderr.isatty())
    report.save(out, records, curves, info)
    names = plots.write_plots(config, records, curves, info, out)
    rows = report.write_report(os.path.join(out, "report.md"), config, records, curves, info,
                               names)
    print(f"{len(records)} runs in {info['total_seconds']:.1f} s -> {out}")
    _print(*rows)
    print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    app.run(main)
