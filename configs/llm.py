"""LLM preference fine-tuning runs (PAPER.md §5–§6): `python -m llm --config configs/llm.py:NAME`.

NAME                    what, where, expected
smollm2_min_length      Min Length on SmolLM2-135M-Instruct, CPU, system turn "Answer in one
                        sentence." (start ≈ 61 tokens, below the 128-token cap). Proxy reward
                        model trained on the embedded data (Bradley–Terry, held-out accuracy),
                        then 100 updates each of on-policy DPO, offline DPO and Pref-FT from the
                        same start; gold reward = −length.
                        Command: python -m llm --config configs/llm.py:smollm2_min_length
                                 --workdir runs/min_length
                        Runtime: 84 min on the shared 2-core CPU at load 2–4 (before
                        trim_responses, which skips the padding of short responses); the
                        15-min goal is for one GPU (benchmarks/gpu.sh).
                        Expected (llm/reports/min_length_smollm2/report.md): RM accuracy ≈ 0.98;
                        eval length 61 → ≈ 4 on-policy DPO (10% of the start by ≈ 50 updates),
                        → ≈ 12 offline DPO, → ≈ 23 Pref-FT: PAPER §5 held.
tiny                    the same pipeline on a random tiny model with a byte tokenizer (tests,
                        smoke runs; ~1 min on CPU, numbers meaningless).
pythia_alpacafarm       Pythia-1.4B SFT → RM → on-policy RWR/REINFORCE/DPO on AlpacaFarm-style
                        data (PAPER §6). GPU/TPU run: mesh fsdp=-1 over all devices (8×H100 or a
                        v4-32 pod); set data.train/test and model to local HF folders.
mistral_ultrafeedback   Mistral-7B on UltraFeedback-style pairs: offline DPO vs Pref-FT and
                        on-policy DPO (PAPER §6). GPU/TPU run: fsdp × tensor (e.g. fsdp=-1,
                        tensor=4 on 4×8 H100s or a v5p-64 pod), bfloat16 activations.
qwen2_ultrafeedback     Qwen2-1.5B, the same stages as mistral_ultrafeedback; fsdp=-1 (one
                        8-GPU host or a v4-8/v5p-8 slice), bfloat16 activations.

Full-scale configs name placeholder paths (/data/...): give yours on the command line, e.g.
  --config.model=/ckpt/Mistral-7B-v0.1 (a Hugging Face folder: config.json +
  model.safetensors[.index.json]) --config.data.train=gs://b/uf/train.jsonl
  --config.data.test=gs://b/uf/test.jsonl --config.gold.ultrarm.path=/ckpt/UltraRM-13b
Before anything loads or compiles, `python -m llm` checks that each path exists and every data
row parses (`llm.config_checks.check_paths`) and names the field that is missing. Paths may be
local or object-store (gs://; reading them needs `gcsfs`); --workdir may be gs:// too.
`--dry_run` prints the mesh and every stage's memory plan from the checkpoint's config.json
alone. param_dtype / compute_dtype: parameters and activations (float32 default).

Every stage is a ConfigDict under `stages`, run in `stage_order`; override anything on the
command line, e.g. `--config.stages.onpolicy_dpo.num_iterations=10 --config.mesh.fsdp=8`.
"""

import ml_collections

from llm.rewards import reward_config
from modeseek.taxonomy import DEFAULT_HPARAMS


def stage(name, kind, **overrides):
    """A stage with every field present (the config is locked: typos fail)."""
    s = ml_collections.ConfigDict(dict(
        name=name, kind=kind, algorithm="", init="", reward_model="",
        trunk_layers=0,            # > 0: only the first layers (a cheaper reward-model trunk)
        train_rows=0,              # > 0: only the first rows of data.train (CPU examples)
        num_steps=0, batch_size=8,                                 # sft / reward_model / offline
        num_iterations=0, prompts_per_iteration=4, samples_per_prompt=2, reuse=1,
        minibatch_prompts=4, max_new_tokens=48, temperature=1.0, top_k=0, top_p=1.0,
        trim_responses=True,       # on-policy: score/update up to the longest response's bucket
        fuse_iteration=False,      # on-policy: sample → score → update as one compiled program
        learning_rate=1e-5, schedule="constant", warmup_steps=0, max_grad_norm=1.0,
        weight_decay=0.0, accumulation_steps=1, preempt_at_step=0,
        max_zero_pair_iterations=3))  # on-policy: stop after this many pair-less iterations
    # the taxonomy's defaults (their one home; validated by modeseek.resolve_hparams), with
    # Ziegler et al.'s adaptive KL target (nats per sample) for token-level PPO stages
    s.hparams = ml_collections.ConfigDict(dict(DEFAULT_HPARAMS, kl_target=6.0))
    for key, value in overrides.items():
        if isinstance(value, dict):
            s[key].update(value)
        else:
            s[key] = value
    return s


def base(model, train, test, *, max_prompt_len, max_response_len):
    c = ml_collections.ConfigDict()
    c.model = model
    # parameters and activations; checkpoint tensors are cast to param_dtype as they are read
    c.param_dtype = "float32"
    c.compute_dtype = "float32"
    c.seed = 0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=0,
                                                   process_id=-1, auto=False))
    c.data = ml_collections.ConfigDict(dict(
        train=train, test=test, max_prompt_len=max_prompt_len,
        max_response_len=max_response_len, use_chat_template=True, ref_batch_size=32,
        skip_bad_rows=False,  # True: leave out (and count in the log) rows that fail
        system_prompt=""))  # non-empty: a system turn before every prompt without one
    c.eval = ml_collections.ConfigDict(dict(every=5, num_prompts=8, max_new_tokens=64,
                                            temperature=1.0, batch_size=16))
    c.checkpoint_every = 10
    c.wandb = False
    # rewards as data (llm.rewards): `reward` is the training (proxy) reward of the on-policy
    # stages when it names one (rule, fn or path; e.g. --config.reward.fn=pkg.mod:score);
    # otherwise each stage's `reward_model` stage is the proxy. `gold` rewards are logged only.
    c.reward = reward_config("rule")
    c.gold = ml_collections.ConfigDict()
    c.stages = ml_collections.ConfigDict()
    return c


def min_length(model, *, tiny=False):
    """Min Length (PAPER §5) sized for a 2-core CPU. SmolLM2-135M-Instruct answers these prompts
    at ≈ 200 tokens (half reach a 256-token cap); a system turn "Answer in one sentence." brings
    the start to ≈ 67 tokens (median 60, 9% at a 160-token cap; measured on 8 held-out prompts ×
    4 samples), so 128 new tokens leave room above the starting lengths at a CPU-sized cost.
    Proxy RM: SmolLM2's first 2 layers + a scalar head. Policies: 100 updates each; on-policy
    DPO takes 4 prompts × 2 samples per iteration (one pair per prompt, reuse 1), offline DPO
    and Pref-FT 4 data pairs per step (≈ 1.1 epochs of the 360 training rows)."""
    from llm.data import default_dataset_path

    c = base(model, default_dataset_path("train"), default_dataset_path("test"),
             max_prompt_len=40 if not tiny else 64, max_response_len=64 if not tiny else 160)
    c.data.use_chat_template = not tiny
    c.data.system_prompt = "" if tiny else "Answer in one sentence."
    c.data.skip_bad_rows = True  # truncation can make a pair identical: left out and counted
    c.data.ref_batch_size = 8
    c.gold.neg_length = reward_config("rule", rule="neg_length")  # Min Length: gold = −length
    policy = dict(learning_rate=2e-5, reward_model="reward_model")
    c.stages.reward_model = stage("reward_model", "reward_model", trunk_layers=2, num_steps=40,
                                  batch_size=8, learning_rate=1e-4)
    c.stages.onpolicy_dpo = stage("onpolicy_dpo", "onpolicy", algorithm="onpolicy_dpo",
                                  num_iterations=100, prompts_per_iteration=4,
                                  samples_per_prompt=2, reuse=1, minibatch_prompts=4,
                                  max_new_tokens=128, hparams=dict(beta=0.1),
                                  # the policy collapses onto one shortest answer (≈ 3 tokens by
                                  # iteration ~75): tied samples form no pair and the update is 0
                                  # (the paper's vanishing gradient), which is the result, not a
                                  # misconfiguration to stop on
                                  max_zero_pair_iterations=0, **policy)
    c.stages.offline_dpo = stage("offline_dpo", "offline", algorithm="offline_dpo",
                                 num_steps=100, batch_size=4, hparams=dict(beta=0.1), **policy)
    c.stages.pref_ft = stage("pref_ft", "offline", algorithm="pref_ft", num_steps=100,
                             batch_size=4, **policy)
    c.stage_order = ("reward_model", "onpolicy_dpo", "offline_dpo", "pref_ft")
    c.eval.update(every=10, num_prompts=16, max_new_tokens=128, batch_size=16)
    c.checkpoint_every = 25
    if tiny:
        c.stages.reward_model.update(trunk_layers=0, num_steps=6, learning_rate=1e-3)
        for name in ("offline_dpo", "pref_ft"):
            c.stages[name].update(num_steps=4, train_rows=32, learning_rate=1e-3)
        c.stages.onpolicy_dpo.update(num_iterations=3, learning_rate=1e-3, max_new_tokens=12,
                                     max_zero_pair_iterations=3)
        c.eval.update(every=2, num_prompts=8, max_new_tokens=12, batch_size=32)
        c.checkpoint_every = 2
    return c


def full_scale(model, train, test, *, mesh, algorithms, batch):
    c = base(model, train, test, max_prompt_len=128, max_response_len=256)
    c.mesh.update(mesh)
    c.data.ref_batch_size = 64
    c.eval.update(every=25, num_prompts=64, max_new_tokens=256)
    c.checkpoint_every = 50
    c.stages.sft = stage("sft", "sft", num_steps=2000, batch_size=batch, learning_rate=2e-5,
                         warmup_steps=100)
    c.stages.reward_model = stage("reward_model", "reward_model", init="sft", num_steps=1000,
                                  batch_size=batch, learning_rate=1e-5)
    order = ["sft", "reward_model"]
    for name in algorithms:
        kw = dict(init="sft", reward_model="reward_model", algorithm=name)
        if name in ("pref_ft", "offline_dpo"):
            c.stages[name] = stage(name, "offline", num_steps=600, batch_size=batch,
                                   learning_rate=5e-7, hparams=dict(beta=0.1), **kw)
        else:
            c.stages[name] = stage(name, "onpolicy", num_iterations=600,
                                   prompts_per_iteration=batch // 2, samples_per_prompt=2,
                                   minibatch_prompts=batch // 2, reuse=1, max_new_tokens=256,
                                   learning_rate=1e-5, hparams=dict(beta=0.1, rwr_beta=1.0),
                                   **kw)
        order.append(name)
    c.stage_order = tuple(order)
    return c


# UltraFeedback configs: name -> (placeholder model path, tensor-parallel size)
ULTRAFEEDBACK = {"mistral_ultrafeedback": ("/data/mistral-7b", 4),
                 "qwen2_ultrafeedback": ("/data/qwen2-1.5b", 1)}


def get_config(arg: str = "smollm2_min_length"):
    if arg in ("", "smollm2_min_length"):
        return min_length("smollm2")
    if arg == "tiny":
        return min_length("tiny", tiny=True)
    if arg == "pythia_alpacafarm":
        c = full_scale("/data/pythia-1.4b", "/data/alpacafarm/train.jsonl",
                       "/data/alpacafarm/test.jsonl", mesh=dict(data=1, fsdp=-1, tensor=1),
                       algorithms=("onpolicy_rwr", "reinforce", "onpolicy_dpo", "offline_dpo",
                                   "pref_ft", "ppo"), batch=64)
        c.data.use_chat_template = False
        c.gold.alpacafarm_rm = reward_config("hf_model", path="/data/alpacafarm-reward-model-7b",
                                             dtype="bfloat16")
        return c
    if arg in ULTRAFEEDBACK:
        model, tensor = ULTRAFEEDBACK[arg]
        c = full_scale(model, "/data/ultrafeedback/train.jsonl",
                       "/data/ultrafeedback/test.jsonl", mesh=dict(data=1, fsdp=-1, tensor=tensor),
                       algorithms=("offline_dpo", "pref_ft", "onpolicy_dpo"), batch=64)
        c.data.use_chat_template = False
        c.gold.ultrarm = reward_config("hf_model", path="/data/UltraRM-13b", dtype="bfloat16")
        c.compute_dtype = "bfloat16"
        return c
    raise ValueError(f"unknown config {arg!r}: smollm2_min_length | tiny | pythia_alpacafarm | "
                     "mistral_ultrafeedback | qwen2_ultrafeedback")
