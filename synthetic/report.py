"""report.md for a synthetic study (and the run folder's results.json / metrics.jsonl: `save`,
`load`; `render` rewrites a finished run folder's report and plots with the current code):
setup, the findings judged at each method's best learning rate and at every matched rate
(`synthetic.findings`), the proxy RMs judged on π_ref, and a table per task. Measures, seed
split and selection criterion: `synthetic.measures`.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from synthetic import diagnose, plots
from synthetic.findings import findings, rm_findings
from synthetic.measures import Study, curve_key, median_iqr


def _n(v):
    return "never" if not np.isfinite(v) else f"{v:.0f}"


def _fmt_steps(steps):
    m, lo, hi = median_iqr(steps)
    return f"{_n(m)} [{_n(lo)}–{_n(hi)}]"


def table(study, task):
    """One row per (algorithm, lr): the selection criterion (selection seeds; ★ = best lr) and
    the verdict seeds' medians."""
    metric, _ = study.metric(task)
    head = (f"| algorithm | lr | selection: mean {metric} | steps to {metric} "
            f"{'≤' if metric != 'gold' else '≥'} {study.target(task):.2f} [IQR] | "
            + " | ".join(f"{metric} @ {s}" for s in study.early)
            + f" | final {metric} | final KL(π‖π_ref) |")
    rows = [head, "|" + "---|" * (6 + len(study.early))]
    for a in study.config.algorithms:
        best = study.best_lr(task, a)
        for lr in study.rates:
            r = study.runs(task, a, lr)
            if r is None:
                continue
            steps, final, early = r
            kl = study.curve(task, a, lr, "kl_ref")
            tail = max(kl.shape[1] // 10, 1)
            star = " ★" if lr == best else ""
            rows.append(f"| {a} | {lr:g}{star} | {np.median(study.criterion(task, a, lr)):.2f} | "
                        f"{_fmt_steps(steps)} | "
                        + " | ".join(f"{np.median(early[s]):.1f}" for s in study.early)
                        + f" | {np.median(final):.2f} | {np.median(kl[:, -tail:].mean(1)):.1f} |")
    return "\n".join(rows)


def _meta_line(t, m):
    skip = ("rm_score_by_length", "rm_count_by_length")  # diagnose_*: their own table
    return f"- **{t}**: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in m.items()
                                      if k not in skip and not k.startswith("diagnose_"))


def write_report(path, config, records, curves, info, plots):
    """Writes report.md; returns (lr-judged rows, proxy-RM rows) as `synthetic.findings`."""
    study = Study(config, records, curves, info)
    rows, rm_rows = findings(study), rm_findings(study)
    s = study.selection_seeds
    lines = [f"# Synthetic study: {config.study}", "",
             f"{len(records)} runs ({len(config.tasks)} tasks × {len(config.algorithms)} "
             f"algorithms × {len(study.rates)} learning rates {study.rates} × {study.seeds} "
             f"seeds), {config.iterations} iterations each; B/C = "
             f"{config.prompts_per_iteration} prompts × C = {config.samples_per_prompt} "
             f"samples, M = {config.minibatch_prompts}, T = {config.reuse}; offline steps use "
             f"{config.offline_pairs} pairs. Wall time {info['total_seconds']:.0f} s "
             f"(task building {info['build_seconds']:.0f} s, compile included).", "",
             f"{'Seed 0 only chooses' if s == 1 else f'Seeds 0–{s - 1} only choose'} each "
             "(task, method)'s best learning rate (lowest "
             "mean over training of the task's gold measure — mean length on Min/Skew, mean "
             "|length − mode| on Mode, highest mean reward on the token bandit; median over "
             f"those seeds; ★ in the tables). The verdicts and every table number use the other "
             f"{study.seeds - s} seeds only: each finding is judged at each method's best lr "
             "and at every matched lr of the grid (see `synthetic/measures.py`, "
             "`synthetic/findings.py`).", "",
             "## Findings", "", "| finding | at best lr | at matched lr | evidence |",
             "|---|---|---|---|"]
    lines += [f"| {f} | **{b}** | **{m}** | {e} |" for f, b, m, e in rows]
    if rm_rows:
        lines += ["", "## Proxy RMs on π_ref", "", "| finding | verdict | evidence |",
                  "|---|---|---|"]
        lines += [f"| {f} | **{v}** | {e} |" for f, v, e in rm_rows]
    ref = info["reference"]
    lines += ["", "## Reference, tasks and proxy RMs", "",
              f"Reference SFT loss {ref.get('sft_loss_first', float('nan')):.3f} → "
              f"{ref.get('sft_loss_last', float('nan')):.3f}.", ""]
    lines += [_meta_line(t, m) for t, m in info["tasks"].items()]
    lines += diagnose.report_lines(info["tasks"])
    for t in config.tasks:
        lines += ["", f"## {t}", "", table(study, t)]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Timings (s)", "", "| algorithm | compile (first chunk) | run |",
              "|---|---|---|"]
    lines += [f"| {a} | {t['compile_s']:.1f} | {t['run_s']:.1f} |"
              for a, t in info["timings"].items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows, rm_rows


def render(out, config=None):
    """Rewrites out/report.md and its plots from out's config.json, results.json and
    metrics.jsonl (or `config`); returns `write_report`'s rows."""
    if config is None:
        with open(os.path.join(out, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
    records, curves, info = load(out)
    names = plots.write_plots(config, records, curves, info, out)
    return write_report(os.path.join(out, "report.md"), config, records, curves, info, names)


# ----------------------------------------------------------------------------- run folder


def save(out, records, curves, info):
    """results.json (records + info) and metrics.jsonl (one line per task/algorithm/seed/
    iteration with every metric)."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"runs": records, "info": info}, f, indent=1, default=str)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for name, m in curves.items():
            task, algorithm, lr = name.split("/")
            seeds, iters = next(iter(m.values())).shape
            for s in range(seeds):
                for i in range(iters):
                    row = {k: round(float(v[s, i]), 5) for k, v in m.items()}
                    f.write(json.dumps(dict(task=task, algorithm=algorithm, lr=float(lr), seed=s,
                                            iteration=i, **row)) + "\n")


def load(out):
    """Inverse of `save`: (records, curves, info) from a run folder (to re-render a report)."""
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    rows = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            key = curve_key(r.pop("task"), r.pop("algorithm"), r.pop("lr"))
            seed, it = r.pop("seed"), r.pop("iteration")
            for k, v in r.items():
                rows.setdefault(key, {}).setdefault(k, {})[(seed, it)] = v
    curves = {}
    for key, metrics in rows.items():
        curves[key] = {}
        for k, cells in metrics.items():
            seeds = 1 + max(s for s, _ in cells)
            iters = 1 + max(i for _, i in cells)
            arr = np.zeros((seeds, iters), np.float32)
            for (s, i), v in cells.items():
                arr[s, i] = v
            curves[key][k] = arr
    return results["runs"], curves, results["info"]
