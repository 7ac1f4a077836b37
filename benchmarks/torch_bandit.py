"""What a user would otherwise run: the bandit's on-policy IPO in plain PyTorch, one run at a
time, written two ways:

- `vectorised`: a careful PyTorch port (all N(N−1)/2 pairs as tensors, no Python loops);
- `per_pair_loops`: the authors' style (a Python loop over prompts and pairs per step, as in
  PAPER.md §7), which costs about 1.5 s per step in their code on this kind of CPU.

Same MLP (100 → 50 → LayerNorm → ReLU → 256 → ReLU → 256 → ReLU → 100), same batch
(10 prompts × 10 samples, all pairs), same exact evaluation (`eval_prompts` prompts every
`eval_every` steps, read on the host, as the study records it).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bandits import env


def make_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(100, 50), torch.nn.LayerNorm(50), torch.nn.ReLU(),
        torch.nn.Linear(50, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 100))


def run(steps: int, style: str, *, tau=0.05, lr=3e-3, reuse=15, eval_every=1,
        eval_prompts=100, threads=1):
    """Seconds per gradient step of one run (after one untimed warm-up step). One thread by
    default: at these sizes more threads only add synchronisation, and on a shared machine they
    spin against other jobs."""
    torch.set_num_threads(threads)
    ref_logp = torch.tensor(np.log(env.reference_policy()), dtype=torch.float32)
    rewards = torch.tensor(env.reward_table("R1"), dtype=torch.float32)
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    eval_x = torch.rand(eval_prompts, 100)
    target = 1.0 / (2.0 * tau)
    t0 = None
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        if step % reuse == 0:
            prompts = torch.rand(10, 100)
            with torch.no_grad():
                probs = torch.softmax(model(prompts), -1)
                actions = torch.multinomial(probs, 10, replacement=True)
        logp = torch.log_softmax(model(prompts), -1).gather(1, actions)
        ratio = logp - ref_logp[actions]
        r = rewards[actions]
        if style == "vectorised":
            mask = (r[:, :, None] - r[:, None, :]) > 0
            h = ratio[:, :, None] - ratio[:, None, :]
            loss = ((h - target) ** 2)[mask].sum() / mask.sum().clamp(min=1)
        else:
            terms = []
            for p in range(10):
                for i in range(10):
                    for j in range(10):
                        if r[p, i] > r[p, j]:
                            terms.append((ratio[p, i] - ratio[p, j] - target) ** 2)
            loss = torch.stack(terms).mean() if terms else ratio.sum() * 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0:
            with torch.no_grad():
                p_eval = torch.softmax(model(eval_x), -1)
                float((p_eval * rewards).sum(-1).mean())  # the exact metric, on the host
    return (time.perf_counter() - t0) / steps
