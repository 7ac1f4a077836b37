"""modeseek: pure JAX losses, samplers and training pieces for preference fine-tuning.

On-policy sampling and negative gradients are both mode-seeking (Tajwar et al., ICML 2024).
Every loss takes log-probabilities (never a model) and returns per-example values.
"""

from modeseek.advantages import (
    RunningStats,
    gae_advantages,
    mean_baseline_advantages,
    nonnegative_advantages,
    rloo_advantages,
    running_stats_init,
    running_stats_normalize,
    running_stats_update,
    zscore_advantages,
)
from modeseek.categorical import sample_categorical
from modeseek.contrastive import (
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
    logratio_margin,
    robust_dpo_loss,
    simpo_loss,
    slic_hinge_loss,
)
from modeseek.decoder import (
    DecoderConfig,
    forward,
    init_params,
    init_scalar_head,
    init_scalar_model,
    param_axes,
    score,
    token_values,
)
from modeseek.diagnose import (
    Recommendation,
    coverage_ks,
    coverage_ks_exact,
    coverage_overlap,
    coverage_overlap_exact,
    diagnose_categorical,
    diagnose_samples,
    ess_ratio,
    ess_ratio_exact,
    kl_opt_ref,
    kl_opt_ref_exact,
    recommend,
    spearman,
    spearman_exact,
    top_k_quantile,
    top_quantile_exact,
)
from modeseek.engine import (
    PolicyModel,
    Rollout,
    Sampling,
    add_ppo_targets,
    generate,
    make_iteration,
    make_rollout_loss,
    make_update,
    minibatch_orders,
    rollout_metrics,
    score_rollout,
)
from modeseek.likelihood import best_of_n_loss, nll_loss, reward_ranks, rwr_loss, rwr_weights
from modeseek.logprobs import (
    categorical_logprobs,
    masked_mean,
    pack_mask,
    sampled_token_logprobs,
    sequence_logprobs,
    token_logprobs,
    unpack_mask,
)
from modeseek.metrics import (
    entropy,
    expectation,
    implicit_rewards,
    kl_divergence,
    preference_metrics,
)
from modeseek.optim import make_optimizer, make_schedule
from modeseek.pairs import (
    best_vs_worst_mask,
    bradley_terry_labels,
    pairwise,
    pairwise_loss,
    random_pairs_mask,
    ranked_pairs_mask,
)
from modeseek.policy_gradient import (
    clipped_value_loss,
    kl_penalty,
    ppo_clip_fraction,
    ppo_clip_loss,
    reinforce_loss,
)
from modeseek.ppo import adaptive_kl_coef, ppo_targets, ppo_token_objective
from modeseek.rewards import (
    negative_length,
    negative_length_distance,
    pool_at_last_token,
    pooling_index,
    response_length,
)
from modeseek.sampler import (
    SampleOutput,
    bucket_length,
    pad_prompts,
    response_bucket,
    sample,
    trim_responses,
)
from modeseek.taxonomy import (
    ALGORITHMS,
    DEFAULT_HPARAMS,
    HPARAMS,
    Algorithm,
    get_algorithm,
    resolve_hparams,
)
from modeseek.train import (
    CPU_TRAIN_COMPILER_OPTIONS,
    TrainState,
    init_train_state,
    make_algorithm_train_step,
    make_objective_loss,
    make_train_step,
    train_compiler_options,
)

__version__ = "0.1.0"
