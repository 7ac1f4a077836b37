"""The geometry map (issue 14): where the reward's peak sits relative to π_ref, which method
wins, and how well `modeseek.recommend` predicts it.

For every geometry (a Gaussian-bump reward r(a) = exp(−((a − peak)/width)²) of the bandit,
bandits.env.bump_reward) the map runs a fixed method set covering the paper's 2×2 (on-policy ×
negative gradient) on `seeds` seeds, each method at its fixed learning rate, all in the study's
compiled program (bandits.study.Runner; one compiled program for the whole map). Per geometry:

- the exact diagnostic of modeseek.diagnose_categorical(log π_ref, r, β = pi_star_beta) and its
  recommendation (PAPER.md §1's rule, thresholds fixed in modeseek.diagnose before any run);
- each method's median final reward and steps to 0.9·max (bandits.measures);
- the measured class: "offline_adequate" when the best offline method's median final reward is
  within MARGIN of the best method's, else "onpolicy_negative" when the best on-policy method
  with a negative gradient is, else "onpolicy_no_negative";
- the winner: among methods within MARGIN of the best median final reward, the fewest median
  steps to 0.9 (never = ∞), then the higher final reward;
- on-policy gain = best on-policy − best offline median final reward; negative-gradient gain =
  best with − best without, among on-policy (and among offline) methods;
- regret of the recommendation = best median final reward − the best within the recommended
  class (offline methods, or on-policy methods with a negative gradient).

Geometry rewards get names "G<peak>_w<width>" in bandits.env.REWARDS (`register_rewards`), so
the study's runner and measures read them like R1/R2.
"""

from __future__ import annotations

import time

import numpy as np

import modeseek
from bandits import env, measures, study, verdicts
from bandits.train import BanditSetup

MARGIN = verdicts.MEASURES["final_reward"][1]  # 0.02 of reward: the verdicts' tie margin


def reward_name(peak, width):
    return f"G{int(peak)}_w{float(width):g}"


def geometries(config):
    """[(peak, width)] in the config's order: widths outer, peaks inner."""
    g = config.geometry
    return [(int(p), float(w)) for w in g.widths for p in g.peaks]


def register_rewards(config):
    """Add each geometry's reward to bandits.env.REWARDS (idempotent)."""
    for peak, width in geometries(config):
        env.REWARDS[reward_name(peak, width)] = (peak, width)


def validate(config):
    """Fail before any compilation, naming the field."""
    for field in ("num_steps", "eval_every", "eval_prompts", "samples_per_prompt",
                  "minibatch_prompts", "onpolicy_prompts", "offline_prompts", "chunk_size",
                  "geometry.seeds"):
        study._positive_int(config, field)
    g = config.geometry
    if not g.peaks or any(not isinstance(p, int) or not 0 <= p < env.NUM_ACTIONS
                          for p in g.peaks):
        study._fail("geometry.peaks", f"must be action indices in [0, {env.NUM_ACTIONS}), got "
                    f"{tuple(g.peaks)}")
    if not g.widths or any(not w > 0 for w in g.widths):
        study._fail("geometry.widths", f"must be values > 0, got {tuple(g.widths)}")
    for name in g.methods:
        try:
            modeseek.get_algorithm(name)
        except ValueError as e:
            study._fail("geometry.methods", str(e))
        lr = g.learning_rates.get(name)
        if not isinstance(lr, float) or not lr > 0:
            study._fail(f"geometry.learning_rates.{name}", f"must be a float > 0, got {lr!r}")
    cells = {(modeseek.get_algorithm(n).on_policy, modeseek.get_algorithm(n).negative_gradient)
             for n in g.methods}
    if len(cells) < 4:
        study._fail("geometry.methods", f"must cover the 2×2 (on-policy × negative gradient); "
                    f"cells covered: {sorted(cells)}")
    study._check_hparams("hparams", dict(config.hparams))
    if not config.pi_star_beta > 0:
        study._fail("pi_star_beta", f"must be > 0, got {config.pi_star_beta}")


def make_setup(config):
    m = config.geometry.methods
    return BanditSetup(algorithms=tuple(m), num_steps=config.num_steps, policy=config.policy,
                       max_prompts_per_batch=max(config.offline_prompts, config.onpolicy_prompts),
                       minibatch_prompts=config.minibatch_prompts,
                       samples_per_prompt=config.samples_per_prompt,
                       eval_prompts=config.eval_prompts, eval_every=config.eval_every,
                       reference=config.reference, pi_star_beta=config.pi_star_beta)


def plan(config):
    """One record per (geometry, method, seed), tagged with its peak and width."""
    validate(config)
    register_rewards(config)
    out = []
    for peak, width in geometries(config):
        for a in config.geometry.methods:
            for seed in range(config.geometry.seeds):
                r = study._record(config, "geometry", a, reward_name(peak, width), seed,
                                  "verdict", config.geometry.learning_rates[a])
                out.append(r | dict(peak=peak, width=width))
    return out


def run(config, progress=None):
    """Run the map: (records with their measures, curves {name: [R, K]}, timings)."""
    records = plan(config)
    t0 = time.perf_counter()
    runner = study.Runner(make_setup(config), chunk_size=config.chunk_size,
                          devices=config.devices)
    curves, outputs = runner.run(records, progress)
    study.summarise(records, curves, outputs, runner.setup)
    for i, r in enumerate(records):
        r["curve_index"] = i
    timings = dict(runner.timings, wall_s=time.perf_counter() - t0, runs=len(records),
                   devices=int(runner.mesh.devices.size), chunk_size=config.chunk_size)
    return records, curves, timings


def diagnostics(config):
    """{(peak, width): (exact measures as floats, modeseek.Recommendation)}."""
    ref = np.log(env.reference_policy())
    geoms = geometries(config)
    rewards = np.stack([env.bump_reward(p, w) for p, w in geoms])  # [G, A]: one batched call
    batch = modeseek.diagnose_categorical(np.broadcast_to(ref, rewards.shape), rewards,
                                          beta=config.pi_star_beta)
    out = {}
    for i, (peak, width) in enumerate(geoms):
        m = {k: float(v[i]) for k, v in batch.items()} | {"ref_peak": float(np.exp(ref[peak]))}
        out[(peak, width)] = (m, modeseek.recommend(m))
    return out


def _cell(name):
    a = modeseek.get_algorithm(name)
    return a.on_policy, a.negative_gradient


def _best(final, names):
    names = [n for n in names if n in final]
    return max(final[n] for n in names) if names else np.nan


def _fewest(steps, names):
    """Fewest median steps to 0.9 among `names` (∞ if none reaches it)."""
    return min([steps[n] for n in names if n in steps], default=np.inf)


def geometry_row(final, steps, predicted):
    """One geometry's verdict from per-method median final reward `final` and median steps to
    0.9 `steps` ({method: value}, never = ∞) and the recommended class `predicted`.
    neg_gain_steps_onpolicy = fewest steps without − with a negative gradient (on-policy;
    ∞ − ∞ = nan); steps_regret = fewest steps to 0.9 among the recommended class's methods
    within the margin of the best final reward − the winner's (∞: none of them is)."""
    top = max(final.values())
    on_neg = [n for n in final if _cell(n) == (True, True)]
    on_pos = [n for n in final if _cell(n) == (True, False)]
    off = [n for n in final if not _cell(n)[0]]
    off_neg = [n for n in off if _cell(n)[1]]
    off_pos = [n for n in off if not _cell(n)[1]]
    if _best(final, off) >= top - MARGIN:
        measured = "offline_adequate"
    elif _best(final, on_neg) >= top - MARGIN:
        measured = "onpolicy_negative"
    else:
        measured = "onpolicy_no_negative"
    near = [n for n in final if final[n] >= top - MARGIN]
    winner = min(near, key=lambda n: (steps[n], -final[n], n))
    allowed = off if predicted == "offline_adequate" else on_neg
    return dict(best_final=top, winner=winner, winner_cell=_cell(winner), measured=measured,
                predicted=predicted, correct=measured == predicted,
                winner_in_class=winner in allowed, regret=top - _best(final, allowed),
                steps_regret=_fewest(steps, [n for n in allowed if n in near]) - steps[winner],
                offline_no_negative_adequate=_best(final, off_pos) >= top - MARGIN,
                onpolicy_gain=_best(final, on_neg + on_pos) - _best(final, off),
                neg_gain_onpolicy=_best(final, on_neg) - _best(final, on_pos),
                neg_gain_steps_onpolicy=_fewest(steps, on_pos) - _fewest(steps, on_neg),
                neg_gain_offline=_best(final, off_neg) - _best(final, off_pos),
                missed_saving=predicted == "onpolicy_negative" and measured == "offline_adequate")


def table(records, config, diag=None):
    """One row per geometry: the exact diagnostic, per-method medians and `geometry_row`."""
    diag = diagnostics(config) if diag is None else diag
    rows = []
    for peak, width in geometries(config):
        final, steps = {}, {}
        for a in config.geometry.methods:
            rs = [r for r in records if r["peak"] == peak and r["width"] == width
                  and r["algorithm"] == a]
            final[a] = measures.median_iqr(measures.values(rs, "final_reward"))[0]
            steps[a] = measures.median_iqr(measures.values(rs, "steps_to_0.9"))[0]
        m, rec = diag[(peak, width)]
        rows.append(dict(peak=peak, width=width, diagnose=m, recommendation=rec, final=final,
                         steps=steps) | geometry_row(final, steps, rec.method_class))
    return rows


def accuracy(rows):
    """Summary of the recommendation over geometry rows: accuracy (predicted class = measured
    class), how often the single winner lies in the recommended class, regret (median and max
    reward left on the table), missed savings (on-policy recommended where offline was
    adequate), and the confusion counts."""
    if not rows:
        raise ValueError("accuracy needs at least one geometry row")
    regret = np.array([r["regret"] for r in rows], np.float64)
    confusion = {}
    for r in rows:
        key = (r["predicted"], r["measured"])
        confusion[key] = confusion.get(key, 0) + 1
    return dict(n=len(rows), correct=sum(r["correct"] for r in rows),
                accuracy=float(np.mean([r["correct"] for r in rows])),
                winner_in_class=sum(r["winner_in_class"] for r in rows),
                regret_median=float(np.median(regret)), regret_max=float(regret.max()),
                regret_over_margin=int(np.sum(regret > MARGIN)),
                missed_savings=sum(r["missed_saving"] for r in rows), confusion=confusion)
