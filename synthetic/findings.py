"""The paper's findings (PAPER.md §1, §5) judged on a synthetic study (`measures.Study`).

Every method-vs-method finding is judged twice, on the verdict seeds only:
  at best lr     each method at its own best learning rate, chosen on the selection seeds
                 (`Study.best_lr`): "held" or "did not hold";
  at matched lr  both methods at each rate of the grid: "held", "held at N of M step sizes" or
                 "did not hold" (`measures.verdict`).
Rows are (finding, verdict at best lr, verdict at matched lr, evidence); the evidence gives
median steps to target (their ratio) and median final values. The proxy-RM checks do not
depend on the learning rate and are separate rows (finding, verdict, evidence): `rm_findings`.
"""

from __future__ import annotations

import numpy as np

from synthetic.measures import beats, rank_correlation, verdict

NOT_JUDGED = "not judged (diverged at every rate)"


def _mark(flag):
    return " ✓" if flag else " ✗"


def _n(v):
    return "never" if not np.isfinite(v) else f"{v:.0f}"


def _best_verdict(flag):
    return NOT_JUDGED if flag is None else verdict([flag])


def _pair(study, task, a, la, b, lb):
    """(a beats b, evidence) with a at rate la and b at rate lb."""
    _, lower = study.metric(task)
    ra, rb = study.runs(task, a, la), study.runs(task, b, lb)
    flag = beats(ra[0], rb[0], ra[1], rb[1], lower)
    sa, sb = np.median(ra[0]), np.median(rb[0])
    ratio = f", ×{sb / sa:.1f}" if np.isfinite(sa) and np.isfinite(sb) and sa > 0 else ""
    return flag, (f"{_n(sa)} vs {_n(sb)} steps{ratio} (final {np.median(ra[1]):.1f} vs "
                  f"{np.median(rb[1]):.1f})")


def _compare(study, task, a, b, what):
    """'a beats b' at the best rates and at every matched rate (None when either is not run)."""
    if any(study.runs(task, m, lr) is None for m in (a, b) for lr in study.rates):
        return None
    flags, parts = [], []
    for lr in study.rates:
        flag, text = _pair(study, task, a, lr, b, lr)
        flags.append(flag)
        parts.append(f"lr {lr:g}{_mark(flag)}: {text}")
    la, lb = study.best_lr(task, a), study.best_lr(task, b)
    best, head = None, f"best lr: {NOT_JUDGED}"
    if la is not None and lb is not None:
        best, text = _pair(study, task, a, la, b, lb)
        head = f"best lr ({la:g} vs {lb:g}){_mark(best)}: {text}"
    return (f"{task}: {what}", _best_verdict(best), verdict(flags),
            f"{a} vs {b}: {head}; matched " + "; ".join(parts))


def _first(study, task, a="onpolicy_dpo"):
    """`a` reaches the target no later than every other method (ties allowed)."""
    if a not in study.config.algorithms:
        return None
    _, lower = study.metric(task)
    others = [b for b in study.config.algorithms if b != a]

    def judge(rate_of):
        mine = study.runs(task, a, rate_of(a))
        rest = {b: study.runs(task, b, rate_of(b)) for b in others}
        flag = all(beats(mine[0], r[0], mine[1], r[1], lower, strict=False)
                   for r in rest.values())
        nxt = min(rest, key=lambda b: np.median(rest[b][0]))
        return flag, (f"{_n(np.median(mine[0]))} steps, next {nxt} "
                      f"{_n(np.median(rest[nxt][0]))}")

    flags, parts = [], []
    for lr in study.rates:
        flag, text = judge(lambda _, lr=lr: lr)
        flags.append(flag)
        parts.append(f"lr {lr:g}{_mark(flag)}: {text}")
    best_rates = {m: study.best_lr(task, m) for m in study.config.algorithms}
    best, head = None, f"best lr: {NOT_JUDGED}"
    if None not in best_rates.values():
        best, text = judge(best_rates.get)
        head = f"best lr{_mark(best)}: {text}"
    return (f"{task}: on-policy DPO (on-policy + negative gradient) reaches the target no later "
            "than any other method", _best_verdict(best), verdict(flags),
            head + "; matched " + "; ".join(parts))


def _spread(study, task, rate_of):
    """Spread across algorithms of the median final gold (each at rate_of(algorithm)), over
    the reference's |gold|; verdict seeds."""
    finals, starts = [], []
    for a in study.config.algorithms:
        g = study.curve(task, a, rate_of(a), "gold")
        finals.append(np.median(g[:, -max(g.shape[1] // 10, 1):].mean(1)))
        starts.append(g[:, 0])
    return float(np.ptp(finals) / max(abs(np.median(starts)), 1e-6))


def _mode_alike(study):
    """Mode: methods end alike (spread < ½ of Min's), at the best rates and at each rate."""
    def judge(rate_of):  # rate_of(task, algorithm) -> learning rate
        a, b = (_spread(study, t, lambda m, t=t: rate_of(t, m)) for t in ("mode", "min"))
        return a < 0.5 * b, f"mode {a:.2f}, min {b:.2f}"

    flags, parts = [], []
    for lr in study.rates:
        flag, text = judge(lambda t, m, lr=lr: lr)
        flags.append(flag)
        parts.append(f"lr {lr:g}{_mark(flag)}: {text}")
    best_rates = {(t, a): study.best_lr(t, a) for t in ("mode", "min")
                  for a in study.config.algorithms}
    best, head = None, f"best lr: {NOT_JUDGED}"
    if None not in best_rates.values():
        best, text = judge(lambda t, m: best_rates[t, m])
        head = f"best lr{_mark(best)}: {text}"
    return ("mode: methods end about the same when the reward peak is on the reference's mode "
            "(spread of final gold / |reference gold| < ½ of Min's)", _best_verdict(best),
            verdict(flags), head + "; matched " + "; ".join(parts))


def _overoptimisation(study, task="skew", a="ppo"):
    """PPO's proxy reward rises while its length ends above π_ref's (a finding, not a claim);
    at PPO's best rate (chosen by mean length, so it favours not over-optimising) and at each."""
    def judge(lr):
        length, proxy = (study.curve(task, a, lr, m) for m in ("length", "train_reward"))
        tail = max(length.shape[1] // 10, 1)
        l0, l1 = np.median(length[:, 0]), np.median(length[:, -tail:].mean(1))
        p0, p1 = np.median(proxy[:, 0]), np.median(proxy[:, -tail:].mean(1))
        return l1 > l0 and p1 > p0, f"length {l0:.1f} → {l1:.1f}, proxy {p0:.2f} → {p1:.2f}"

    def observed(v):
        return v.replace("held", "observed").replace("did not hold", "not observed")

    flags, parts = [], []
    for lr in study.rates:
        flag, text = judge(lr)
        flags.append(flag)
        parts.append(f"lr {lr:g}: {text}")
    lr = study.best_lr(task, a)
    best, head = None, f"best lr: {NOT_JUDGED}"
    if lr is not None:
        best, text = judge(lr)
        head = f"best lr {lr:g}: {text}"
    return (f"{task}: PPO over-optimises the proxy RM (proxy up, length above π_ref's)",
            observed(_best_verdict(best)), observed(verdict(flags)),
            head + "; matched " + "; ".join(parts))


def findings(study):
    """[(finding, verdict at best lr, verdict at matched lr, evidence)] for the study's tasks."""
    config, rows = study.config, []
    if config.study == "length":
        for t in [t for t in ("min", "skew") if t in config.tasks]:
            rows.append(_compare(study, t, "onpolicy_dpo", "offline_dpo",
                                 "on-policy sampling beats offline data (peaks disjoint); "
                                 "paper: ≈ 2× faster"))
            for b in ("onpolicy_bofn", "onpolicy_rwr"):
                rows.append(_compare(study, t, "onpolicy_dpo", b,
                                     "a negative gradient beats max-likelihood on-policy"))
            rows.append(_compare(study, t, "offline_dpo", "pref_ft",
                                 "offline: a negative gradient beats Pref-FT"))
            rows.append(_first(study, t))
        if "mode" in config.tasks and "min" in config.tasks:
            rows.append(_mode_alike(study))
        if "skew" in config.tasks and "ppo" in config.algorithms:
            rows.append(_overoptimisation(study))
    elif "R1" in config.tasks:
        rows.append(_compare(study, "R1", "onpolicy_dpo", "offline_dpo",
                             "on-policy beats offline when the peak has low π_ref"))
        for b in ("onpolicy_bofn", "onpolicy_rwr"):
            rows.append(_compare(study, "R1", "onpolicy_dpo", b,
                                 "a negative gradient beats max-likelihood"))
        rows.append(_first(study, "R1"))
    return [r for r in rows if r is not None]


def _rm_row(t, m):
    mean, count = m["rm_score_by_length"], m["rm_count_by_length"]
    split = m.get("skew_cap") or m["ref_median_length"]
    if t == "mode":
        shape = (f"highest mean score at length {m['rm_ref_argmax_length']} (data mode "
                 f"{m['mode']})")
    else:
        mono = "yes" if m["rm_ref_monotone"] else f"no (rises at {m['rm_ref_rises']})"
        shape = (f"score falls monotonically with length: {mono}; Spearman ρ(length, score) "
                 f"{rank_correlation(mean, count, 0, split):+.2f} for lengths ≤ {split}, "
                 f"{rank_correlation(mean, count, split + 1, len(mean)):+.2f} above")
    return (f"{t}: the proxy RM orders gold-labelled π_ref pairs better than chance",
            "held" if m["rm_ref_accuracy"] > 0.5 else "did not hold",
            f"accuracy {m['rm_ref_accuracy']:.3f} on {m['rm_ref_pairs']} π_ref pairs (on its "
            f"own held-out preference pairs {m['rm_heldout_accuracy']:.3f}); {shape}")


def rm_findings(study):
    """[(finding, verdict, evidence)]: the proxy RMs judged on gold-labelled π_ref pairs."""
    if study.config.study != "length":
        return []
    return [_rm_row(t, m) for t, m in study.info["tasks"].items()]
