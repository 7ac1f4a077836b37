"""Per-op profile of a compiled XLA:CPU program: which fusions, dots and copies take the time.

  python benchmarks/xla_profile.py train --layers 4      # SmolLM2-width training step, 8 x 256
  python benchmarks/xla_profile.py layer                  # one layer, forward + backward
  python benchmarks/xla_profile.py decode --batch 16      # the sampler, 64 new tokens

`jax.profiler.trace(..., create_perfetto_trace=True)` writes a Chrome-trace JSON with one event
per XLA thunk (a loop fusion, a `__ynn_fusion` matmul, a plain Eigen `dot`, a copy), named as
in the optimised HLO (`compiled.as_text()`). This script runs the program once untraced (warm),
once traced, and prints the ops by total time with their shapes and source ops, grouped totals
by kind, the trace's wall time and the minor page faults of the traced run.

Caveat when reading it: XLA:CPU runs independent thunks concurrently and large ones
asynchronously (an op's span then ends at its "end: <name>" event), so spans of overlapping ops
add up to more than the wall time. Random weights (shapes are what matters here).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llm.huge_pages import reexec_with_huge_pages  # noqa: E402

if __name__ == "__main__":  # before jax loads: glibc reads its tunables at process start
    reexec_with_huge_pages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from llm.state import train_compiler_options  # noqa: E402
from modeseek import decoder as dec  # noqa: E402
from modeseek import sampler  # noqa: E402
from modeseek.decoder_layers import _attention_mask, _Block  # noqa: E402

_SKIP = ("$", "ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener")


def build(what: str, layers: int, batch: int, length: int):
    """(compiled program, its arguments) for `what`."""
    config = dec.DecoderConfig.smollm2_135m(num_layers=layers)
    params = dec.init_params(jax.random.key(0), config)
    if what == "decode":
        prompts = jax.random.randint(jax.random.key(1), (batch, 40), 0, config.vocab_size)
        kwargs = dict(max_new_tokens=64, temperature=1.0)
        args = (jax.random.key(2), params, config, prompts, jnp.ones_like(prompts))
        compiled = sampler.sample.lower(*args, **kwargs).compile()
        return compiled, (args[0], params, prompts, args[4])
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, config.vocab_size)
    if what == "train":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from forward import make_step

        optimizer = optax.adamw(1e-5, weight_decay=0.0)
        args = (params, optimizer.init(params), tokens)
        step = make_step(config, optimizer, donate=False,
                         compiler_options=train_compiler_options())
        return step.lower(*args).compile(), args
    layer = jax.tree.map(lambda x: x[0], params["layers"])
    x = jax.random.normal(jax.random.key(2), (batch, length, config.embed_dim))
    mask_BxL = jnp.ones((batch, length), bool)
    pos, slots = dec.positions_from_mask(mask_BxL), jnp.arange(length)
    mask = _attention_mask(slots, pos, slots, pos, mask_BxL, None)

    def loss(p, x):
        (y, _), _ = _Block(config).apply({"params": p}, (x, None), 0, pos, mask, jnp.int32(0))
        return jnp.sum(y * x)

    fn = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=train_compiler_options())
    return fn.lower(layer, x).compile(), (layer, x)


def op_spans(trace_dir: str):
    """[(name, start µs, end µs)] of every op event; async ops end at their "end: name"."""
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = sorted((e for e in (trace["traceEvents"] if isinstance(trace, dict) else trace)
                     if "ts" in e), key=lambda e: e["ts"])
    open_at, spans = collections.defaultdict(list), {}
    for e in events:
        name = e["name"]
        if name.startswith("end: ") and open_at[name[5:]]:
            start = open_at[name[5:]].pop(0)
            spans[(name[5:], start)] = max(spans[(name[5:], start)], e["ts"])
        elif e.get("ph") == "X" and not name.startswith(_SKIP):
            open_at[name].append(e["ts"])
            spans[(name, e["ts"])] = e["ts"] + e["dur"]
    return [(name, start, end) for (name, start), end in spans.items()]


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str]]:
    """op name -> (result shape, source op from the metadata) in the optimised HLO."""
    index = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) [\w\-]+\(", line)
        if m:
            source = re.search(r'op_name="([^"]*)"', line)
            index.setdefault(m.group(1), (m.group(2).split("{")[0],
                                          source.group(1) if source else ""))
    return index


def kind(name: str) -> str:
    for prefix, label in (("ynn_fusion", "YNNPACK matmul"), ("dot", "Eigen dot"),
                          ("while", "loop (contains the others)")):
        if name.startswith(prefix):
            return label
    return "copy/transpose" if ("copy" in name or "transpose" in name) else "other fusion"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("train", "layer", "decode"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    compiled, call_args = build(args.what, args.layers, args.batch, args.length)
    index = hlo_index(compiled.as_text())
    jax.block_until_ready(compiled(*call_args))
    with tempfile.TemporaryDirectory() as trace_dir:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(compiled(*call_args))
        wall = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        spans = op_spans(trace_dir)
    total, count = collections.Counter(), collections.Counter()
    for name, start, end in spans:
        total[name] += (end - start) / 1e3
        count[name] += 1
    by_kind = collections.Counter()
    for name, ms in total.items():
        by_kind[kind(name)] += ms
    print(f"{args.what}: SmolLM2-135M width, {args.layers} layers, batch {args.batch}, length "
          f"{args.length}; traced call {wall:.2f} s wall (tracing included), {faults} minor page "
          f"faults; load {os.getloadavg()[0]:.2f}; GLIBC_TUNABLES="
          f"{os.environ.get('GLIBC_TUNABLES', '')!r}")
    print("by kind (ms, spans overlap):", {k: round(v, 1) for k, v in by_kind.most_common()})
    print("| ms | calls | op | shape | source |\n|---|---|---|---|---|")
    for name, ms in total.most_common(args.top):
        shape, source = index.get(name, ("?", ""))
        print(f"| {ms:.1f} | {count[name]} | {name} | {shape} | {source[-60:]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
