"""The synthetic tier of Tajwar et al. (ICML 2024): length tasks and the token bandit
(PAPER.md §4 token variant, §5).

Command:   python -m synthetic                                  (length study, runs/synthetic-*)
           python -m synthetic --config configs/synthetic.py:reduced   (what was measured)
           python -m synthetic --quick                          (1 seed × 20 iterations)
           python -m synthetic --config configs/synthetic.py:token_bandit
           --config.learning_rate=X runs one rate instead of the grid (traced: no recompile).
Sizing:    responses up to 64 tokens (lengths 1…63 + EOS; 64 = no EOS), data mode 24, π_ref's
           mean length 28.1–28.4 and median 27–28 (reference SFT on this data; two builds of
           the same config differ slightly: CPU threading), so Min/Skew start far above the
           target (length ≤ 0.1 · π_ref's mean ≈ 2.8 tokens); Skew caps every preference
           completion at π_ref's median, covering π_ref's lower half exactly. Each proxy
           RM is also judged on 1,024 fresh gold-labelled π_ref pairs. The learning rate is a
           swept axis, LEARNING_RATE_GRID for every method, rates × seeds vmapped in one
           compiled program per algorithm (no extra compiles for the seed split below).
Selection: seeds 0…selection_seeds−1 only choose each (task, method)'s best learning rate: the
           rate with the lowest median (over those seeds) of the mean over training of the
           task's gold measure — Min/Skew: mean gold length (lower is better); Mode: mean
           |length − mode| (= −mean gold reward); token bandit: highest mean gold reward —
           (`synthetic/measures.py`). The other seeds are the verdict seeds: every finding is
           judged on them only, (a) at each method's own best rate and (b) at every matched
           rate of the grid; the report shows both ("held", "held at N of M step sizes",
           "did not hold").
Runtime:   `reduced` (3 tasks × 6 algorithms × 3 rates × 3 seeds = 162 runs: 1 selection +
           2 verdict seeds; 30 iterations of 4 prompts × 4 samples, T = 2: 60 gradient steps)
           on (3e-4, 1e-3, 3e-3): 471 s wall on this shared 2-core CPU at load average 1.5–1.9
           (YNNPACK dots; 741 s before them, at load 2–4 with the test suite beside it),
           reference and RMs from the cache (17 s); building them without a cache took 833 s
           (previous run, load 5–7.5), and per algorithm compile 16–31 s (25–270 s in earlier
           versions). The default (5 seeds = 2 selection + 3 verdict, 40 iterations of
           8 prompts × 4 samples: 270 runs, 80 steps) is ≈ 4.4× the run work: 1,686 s wall at
           load 1.5–2 (first run 2026-12-02; synthetic/results/default/report.md).
Expected:  the paper: on Min and Skew Length on-policy DPO shortens responses fastest (≈ 0
           tokens within ≈ 75 steps, ≈ 2× faster than offline DPO), max-likelihood methods
           lag; on Mode Length all methods end close together. Measured (`reduced`, medians over
           the 2 verdict seeds, target length ≤ 0.1 · π_ref's mean 28.1 = 2.8 tokens;
           synthetic/results/report.md): on (1e-4, 3e-4, 1e-3) every (task, method) chose 1e-3,
           on (3e-4, 1e-3, 3e-3) every method chose 3e-3 on Min, all but RWR and Pref-FT (1e-3)
           on Skew, and all but PPO chose 1e-3 on Mode (the one task whose optimum the grid now
           brackets): on Min/Skew the selection criterion (mean length over training) rewards
           speed, so the best rate is the largest stable one, and at 3e-3 the task is solved in
           2 iterations (4 steps) by every method but RWR and Pref-FT, where differences vanish
           into ties. Steps to the target on Min at 3e-4 / 1e-3 / 3e-3: on-policy DPO 22 / 7 /
           4, offline DPO 23 / 8 / 4, PPO 22 at 3e-4, Best-of-N 25 / 11 / 6, RWR 29 / 18 / 11,
           Pref-FT never (ends ≈ 21 tokens). Verdicts (at best lr | at matched lr): on-policy
           beats offline DPO — did not hold | did not hold on Min (×1.0–1.1) and Skew (×1.1–1.2):
           the paper's ≈ 2× does not reproduce at any rate; negative gradient beats
           max-likelihood on-policy — vs RWR held | held on Min (×1.3–2.8), held | held at 2 of 3
           on Skew; vs Best-of-N did not hold | held at 2 of 3 on Min, held | held at 2 of 3 on
           Skew; offline DPO beats Pref-FT — held | held on both; on-policy DPO first — did not
           hold (offline DPO ties or comes within one step; PPO ties at 3e-4); Mode, methods
           end alike — did not hold at any rate (spread 0.40–0.76 of the reference's |gold|).
           PPO over-optimisation not observed (PPO shortens responses to ≈ 0 at every rate).
           Proxy RMs order π_ref pairs at 0.986 (Min), 0.970 (Mode), 0.825 (Skew; 0.980 on its
           own held-out data); the Skew RM's score rises with length above the cap (27) only
           weakly (Spearman +0.41). modeseek.diagnose before training: Min ESS/n 0.20, KS 0.02
           → "offline adequate"; Mode 0.41 / 0.02 → offline adequate; Skew 0.20 / KS 0.28 →
           on-policy + negative gradient (the data does not cover π_ref) — consistent with the
           measured near-ties on Min and Mode; on Skew the measured on-policy gain is ×1.1–1.2.
           With 1 selection and 2 verdict seeds, a verdict is 2 paired seeds: a sign, not a
           result.
"""

import ml_collections

from modeseek.taxonomy import DEFAULT_HPARAMS

CORE = ("onpolicy_dpo", "offline_dpo", "ppo", "onpolicy_rwr", "pref_ft", "onpolicy_bofn")
ALL = CORE + ("onpolicy_ipo", "offline_ipo", "reinforce", "rloo")

# The learning rate is a swept axis, the same grid for every method: every verdict is judged
# at each rate of the grid ("held at N of M step sizes") and at each method's own best rate,
# chosen on the selection seeds (see the docstring). The grid spans where methods move within
# the budget: in the `reduced` run on (3e-5, 1e-4, 3e-4) no method reached the target at 3e-5
# or 1e-4 in 60 steps (3e-5 barely moved: 28 → ≈ 22 tokens), and all but Pref-FT reached it
# at 3e-4, so 3e-5 was dropped and 1e-3 added. On (1e-4, 3e-4, 1e-3) every (task, method)
# chose 1e-3, the grid's top, so the grid moved up once more to bracket the optimum.
LEARNING_RATE_GRID = (3e-4, 1e-3, 3e-3)


def _length_data():
    return ml_collections.ConfigDict(dict(
        vocab_size=32, prompt_len=4, max_new_tokens=64, mode=24.0,
        sft_examples=8192, sft_steps=300, sft_batch=64, sft_lr=3e-3,
        # skew_cap 0: cap Skew's completions at π_ref's median length (measured on the samples)
        pref_prompts=2048, heldout_fraction=0.1, skew_cap=0, offline_pairs_max=1024,
        rm_steps=200, rm_batch=64, rm_lr=1e-3, pool_prompts=1024,
        rm_eval_prompts=1024))  # fresh π_ref pairs, gold-labelled: the proxy RM's accuracy


def _token_data():
    return ml_collections.ConfigDict(dict(
        vocab_size=100, prompt_len=1, max_new_tokens=9, mode=0.0,
        sft_examples=8192, sft_steps=300, sft_batch=64, sft_lr=3e-3,
        pref_prompts=1024, heldout_fraction=0.1, skew_cap=0, offline_pairs_max=1024,
        rm_steps=0, rm_batch=0, rm_lr=0.0, pool_prompts=100, rm_eval_prompts=0))


def get_config(arg: str = ""):
    """arg: "" (length study), "quick", "reduced", "token_bandit", "token_quick" or "tiny"."""
    c = ml_collections.ConfigDict()
    c.study = "length"
    c.tasks = ("min", "mode", "skew")
    c.algorithms = CORE
    c.seeds = 5
    c.selection_seeds = 2            # seeds 0..S−1 choose each (task, method)'s best lr only
    c.data_seed = 0
    c.iterations = 40
    c.iterations_per_chunk = 10
    c.prompts_per_iteration = 8      # B/C
    c.samples_per_prompt = 4         # C
    c.minibatch_prompts = 8          # M (one minibatch per pass: T gradient steps/iteration)
    c.reuse = 2                      # T
    c.offline_pairs = 16             # pairs per offline step (= B/C·C/2 sequences' worth)
    c.learning_rate_grid = LEARNING_RATE_GRID  # swept for every algorithm in one program
    c.learning_rate = 0.0            # > 0: this one rate instead of the grid (traced)
    c.target_fraction = 0.1          # Min/Skew: "short" = length ≤ this × π_ref's mean length
    c.early_steps = (10, 20, 40)     # gradient steps at which curves are compared
    # loss hyperparameters: the taxonomy's defaults (their one home), overridable here
    c.hparams = ml_collections.ConfigDict(dict(DEFAULT_HPARAMS))
    c.overrides = ml_collections.ConfigDict({})
    c.data = _length_data()
    c.model = ml_collections.ConfigDict(dict(num_layers=2))  # overrides of the model preset

    if arg in ("token_bandit", "token_quick"):
        c.study = "token_bandit"
        c.tasks = ("R1", "R2")
        c.data = _token_data()
        c.model.num_layers = 3
        # at 1e-4, 40 steps barely move the 9-token reward (token_quick run)
        c.learning_rate_grid = (1e-3,)
        c.iterations = 60
        c.seeds, c.selection_seeds = 3, 1
        if arg == "token_quick":
            c.seeds, c.iterations = 2, 20
    elif arg == "quick":
        c.seeds, c.selection_seeds = 2, 1
        c.iterations = 20
    elif arg == "reduced":  # the default's tasks, data and grid on a loaded CPU: see above
        c.seeds, c.selection_seeds = 3, 1
        c.iterations = 30
        c.prompts_per_iteration = c.minibatch_prompts = 4
        c.offline_pairs = 8
    elif arg == "tiny":  # tests: every code path in seconds
        c.tasks = ("min",)
        c.seeds, c.selection_seeds = 2, 1
        c.iterations = 2
        c.iterations_per_chunk = 2
        c.prompts_per_iteration = 2
        c.minibatch_prompts = 2
        c.samples_per_prompt = 2
        c.offline_pairs = 2
        c.reuse = 1
        c.model.num_layers = 1
        c.data.max_new_tokens = 12
        c.data.mode = 5.0
        c.data.skew_cap = 3
        c.data.sft_examples = 512
        c.data.sft_steps = 30
        c.data.sft_batch = 16
        c.data.pref_prompts = 128
        c.data.rm_steps = 30
        c.data.rm_batch = 16
        c.data.pool_prompts = 16
        c.data.rm_eval_prompts = 64
    elif arg:
        raise ValueError(f"unknown configs/synthetic.py argument {arg!r}; use '', 'quick', "
                         "'reduced', 'token_bandit', 'token_quick' or 'tiny'")
    c.lock()
    return c
