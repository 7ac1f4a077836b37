"""llm.memory_plan / llm.dry_run: the per-device memory plan against XLA's own accounting,
hand-computed sharded sizes, the 7B plan, the error naming the biggest item, the dry run."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import modeseek
from configs.llm import get_config
from llm import memory_plan as mp
from llm import sharding as shd
from llm.dry_run import check_stage_fits, dry_run_report, model_config_only
from modeseek import decoder as dec

ONE = dict(data=1, fsdp=1, tensor=1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xla_memory(config, batch, length, optimizer):
    """memory_analysis() of the donated forward + backward + AdamW step of mean −log p."""
    def loss_fn(params, b, key):
        del key
        logits = dec.forward(params, config, b["tokens"], attention_mask_BxL=b["mask"])
        return -jnp.mean(modeseek.sequence_logprobs(logits, b["tokens"], b["mask"])), {}

    step = modeseek.make_train_step(loss_fn, optimizer)
    params = jax.eval_shape(functools.partial(dec.init_params, config=config), jax.random.key(0))
    state = jax.eval_shape(functools.partial(modeseek.init_train_state, optimizer=optimizer),
                           params)
    b = {"tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32),
         "mask": jax.ShapeDtypeStruct((batch, length), bool)}
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.jit(step, donate_argnums=0).lower(state, b, key).compile().memory_analysis()


# (batch, length, vocab, embed, layers, mlp, mlp kind, remat): attention-and-MLP-bound,
# logits-bound (vocab 4096: the [B, L, V] float32 buffers are ~80% of the plan), a GELU MLP;
# and, once the decoder has a `remat` field, the first one under each remat policy
_HAS_REMAT = "remat" in {f.name for f in dataclasses.fields(dec.DecoderConfig)}
XLA_CASES = [(4, 64, 256, 48, 2, 192, "swiglu", "none"),
             (4, 64, 4096, 48, 2, 192, "swiglu", "none"),
             (4, 64, 512, 64, 4, 256, "gelu", "none")] + \
            [(4, 64, 256, 48, 4, 192, "swiglu", r) for r in mp.REMATS[1:] if _HAS_REMAT]


@pytest.mark.parametrize("batch,length,vocab,embed,layers,mlp_dim,mlp,remat", XLA_CASES)
def test_plan_matches_xla_memory_analysis(batch, length, vocab, embed, layers, mlp_dim, mlp,
                                          remat):
    config = dec.DecoderConfig.tiny(vocab_size=vocab, embed_dim=embed, num_layers=layers,
                                    head_dim=embed // 4, mlp_dim=mlp_dim, mlp=mlp,
                                    max_len=length, **({"remat": remat} if _HAS_REMAT else {}))
    optimizer = modeseek.make_optimizer(learning_rate=1e-3, max_grad_norm=1.0)
    xla = _xla_memory(config, batch, length, optimizer)
    plan = mp.plan_memory(config, mesh_shape=ONE, batch_per_device=batch, seq_len=length,
                          optimizer=optimizer)
    # arguments = parameters + optimizer state + the step counter, the batch and the key:
    # the plan's two items must account for all but those few hundred bytes (< 1%)
    resident = plan.parameters + plan.optimizer_state
    assert resident <= xla.argument_size_in_bytes
    assert xla.argument_size_in_bytes / resident < 1.01
    # temp = XLA's buffer assignment for everything the step allocates beyond its arguments
    # (gradients, saved activations, the backward's transients, fused temporaries, after buffer
    # reuse). The plan counts whole saved tensors per layer, while XLA fuses some and keeps
    # others (e.g. SiLU's sigmoid), so it is an estimate, checked within [0.75, 1.25]: measured
    # 0.77-1.22 over these 5 configurations since token_logprobs stopped keeping a log-softmax;
    # counting the logits once instead of 3 times, or leaving out the [L, L] scores, fails it
    ratio = xla.temp_size_in_bytes / (plan.gradients + plan.activations)
    assert 0.75 < ratio < 1.25, (xla.temp_size_in_bytes, plan.gradients + plan.activations)
    # donated: the new state reuses the argument buffers
    assert xla.alias_size_in_bytes >= resident


def test_sharded_division_on_1x4x2_mesh_by_hand():
    config = dec.DecoderConfig.tiny(vocab_size=256, num_heads=4, num_kv_heads=2, head_dim=12,
                                    embed_dim=48, mlp_dim=128)
    mesh = dict(data=1, fsdp=4, tensor=2)
    # embed -> fsdp (4), vocab/heads/kv_heads/mlp -> tensor (2), float32:
    #   embedding [256, 48]              256·48·4 / 8 = 6144
    #   per layer: 2 norms [48]          2·48·4 / 4   = 96
    #              q, o [48, 4, 12]      2·(48·4·12·4 / 8) = 2304
    #              k, v [48, 2, 12]      2·(48·2·12·4 / 8) = 1152
    #              gate, up, down        3·(48·128·4 / 8) = 9216      -> 12768 per layer
    #   final norm [48]                  48·4 / 4 = 48
    params = 6144 + 2 * 12768 + 48
    plan = mp.plan_memory(config, mesh_shape=mesh, batch_per_device=1, seq_len=8)
    assert plan.parameters == params == 31728
    assert plan.gradients == params
    # AdamW: mu and nu split like their parameter, plus one replicated int32 step count
    assert plan.optimizer_state == 2 * params + 4
    # 3 kv heads do not divide tensor=2: k and v are then split over fsdp only (/4, not /8)
    odd = config.replace(num_heads=6, num_kv_heads=3, head_dim=8)
    kv_split, kv_replicated = 2 * 2 * (48 * 3 * 8 * 4) // 8, 2 * 2 * (48 * 3 * 8 * 4) // 4
    got = mp.plan_memory(odd, mesh_shape=mesh, batch_per_device=1, seq_len=8).parameters
    q_o = 2 * 2 * (48 * 6 * 8 * 4) // 8
    assert got == 6144 + 2 * (96 + 9216) + 48 + q_o + kv_replicated
    assert kv_replicated == 2 * kv_split


def test_mistral_7b_on_8_way_fsdp_by_hand():
    config = dec.DecoderConfig.mistral_7b(dtype="bfloat16", param_dtype="bfloat16")
    # parameters: embedding + lm_head 2·32000·4096 = 262,144,000; per layer q, o 4096·4096,
    # k, v 4096·1024, gate/up/down 3·4096·14336, 2 norms of 4096 = 218,112,000; × 32 layers;
    # final norm 4096  ->  7,241,732,096 ≈ 7.24e9, bf16 = 2 bytes, every dimension divides 8
    n = 2 * 32000 * 4096 + 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336
                                 + 2 * 4096) + 4096
    assert n == dec.num_params(config) == 7_241_732_096
    per_device = n * 2 // 8  # 1,810,433,024 B = 1.686 GiB
    B, L, S = 4, 384, 64  # rows per device, 128 prompt + 256 response tokens, sampler rows
    plan = mp.plan_memory(config, mesh_shape=dict(data=1, fsdp=8, tensor=1),
                          batch_per_device=B, seq_len=L, remat="full", reference_model=True,
                          reward_model_config=config, sampler=(S, L))
    assert plan.parameters == plan.gradients == plan.reference_model == per_device
    assert plan.optimizer_state == 2 * per_device + 4  # bf16 moments: optax follows params
    # reward model: the same trunk + a float32 head (4096 kernel split /8, scalar bias)
    assert plan.reward_model == per_device + 4096 * 4 // 8 + 4
    # activations, remat full, bf16 (c = 2), per token: block inputs 32·2·4096 = 262,144;
    # one recomputed layer 2·(4·4096 + (32 + 16)·128 + 32·128 + 4·14336) + 10·32·384 = 290,816;
    # score/probability gradients 8·32·384 = 98,304; logits 3·4·32000 = 384,000;
    # embedding/final norm/mask 3·4096·2 + 384 = 24,960  ->  1,060,224 B × 4·384 tokens
    per_token = 262_144 + 290_816 + 98_304 + 384_000 + 24_960
    assert plan.activations == per_token * B * L == 1_628_504_064  # 1.52 GiB
    assert plan.logits == 384_000 * B * L
    # KV cache: 32 layers × k, v × 64 rows × 8 kv heads × 384 slots × 128 × 2 B over 8 devices
    # (rows split over fsdp) + bool mask and int32 positions [64, 384] / 8 + int32 index
    assert plan.kv_cache == 32 * 2 * 64 * 8 * 384 * 128 * 2 // 8 + 64 * 384 * 5 // 8 + 4
    assert plan.peak_phase == "update"
    # resident: parameters, 2 moments, reference, reward model; update: gradients + activations
    total = 6 * per_device + 4 + (4096 * 4 // 8 + 4) + 1_628_504_064
    assert plan.total == total  # ≈ 12.0 GiB: fits an 80 GiB H100 with room to spare
    assert 11.5 * mp.GiB < plan.total < 12.5 * mp.GiB
    plan.check(80 * mp.GiB)
    table = plan.table(80 * mp.GiB)
    assert "activations" in table and "of 80.0 GiB" in table and "remat=full" in table
    assert "kv_cache" in table and "generation (not at peak)" in table


def test_error_names_biggest_item_and_knob():
    config = dec.DecoderConfig.tiny()
    plan = mp.plan_memory(config, mesh_shape=ONE, batch_per_device=8, seq_len=128,
                          stage="onpolicy_dpo", batch_field="minibatch_prompts")
    assert max(plan.items(), key=plan.items().get) == "activations"
    plan.check(None)  # no known limit (CPU): nothing to check
    plan.check(plan.total)
    with pytest.raises(mp.MemoryPlanError) as e:
        plan.check(plan.total - 1)
    msg = str(e.value)
    assert "biggest item: activations" in msg
    assert "remat='full'" in msg and "config.stages.onpolicy_dpo.minibatch_prompts" in msg
    # a big KV cache makes generation the peak phase and names the sampler's knobs
    big_cache = mp.plan_memory(config, mesh_shape=ONE, batch_per_device=1, seq_len=8,
                               sampler=(512, 256), stage="x")
    assert big_cache.peak_phase == "generation"
    with pytest.raises(mp.MemoryPlanError, match="biggest item: kv_cache .*max_new_tokens"):
        big_cache.check(big_cache.total // 2)
    with pytest.raises(ValueError, match="remat must be one of"):
        mp.plan_memory(config, mesh_shape=ONE, batch_per_device=1, seq_len=8, remat="some")
    with pytest.raises(ValueError, match="mesh_shape needs exactly the axes"):
        mp.plan_memory(config, mesh_shape=dict(data=1), batch_per_device=1, seq_len=8)


def test_remat_orders_activations():
    """Full remat keeps less than dots_saveable, which keeps less than none (hand values)."""
    config = dec.DecoderConfig.tiny()
    acts = {r: mp.activation_bytes(config, batch=2, seq_len=16, remat=r, compute_bytes=4)
            for r in mp.REMATS}
    assert acts["full"]["layers"] < acts["dots_saveable"]["layers"] < acts["none"]["layers"]
    assert acts["full"]["logits"] == acts["none"]["logits"] == 2 * 16 * 3 * 4 * 256
    # none, per token: 4·(4·48 + (4 + 4)·12 + 4·12 + 4·128) + 12·4·16 = 4160 per layer, × 2
    # layers, + score/probability gradients 8·4·16 = 512
    assert acts["none"]["layers"] == 2 * 16 * (2 * 4160 + 512)
    # full: the block input 4·48 per layer + one recomputed layer + the same transient
    assert acts["full"]["layers"] == 2 * 16 * (2 * 192 + 4160 + 512)
    # dots_saveable: matmul outputs 4·(3·48 + 96 + 48 + 2·128) + float32 scores 4·4·16 = 2432
    # per layer; the backward recomputes the rest of one layer's `none` set, 4160 − 2432
    assert acts["dots_saveable"]["layers"] == 2 * 16 * (2 * 2432 + (4160 - 2432) + 512)


def test_device_memory_bytes():
    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert mp.device_memory_bytes(Device({"bytes_limit": 80 * mp.GiB}), 5) == 80 * mp.GiB
    assert mp.device_memory_bytes(Device(None), default=5) == 5  # CPU reports no stats
    assert mp.device_memory_bytes(Device({"bytes_in_use": 1})) is None


def test_dry_run_report_tiny_config():
    cfg = get_config("tiny")
    report = dry_run_report(cfg, jax.devices())
    for name in cfg.stage_order:
        assert f"({name})" in report
    assert "no device memory limit known" in report
    # with a limit, the on-policy stage (policy, reference, reward model, activations) is
    # judged, and a too-small limit names its biggest item
    tight = dry_run_report(cfg, jax.devices(), device_bytes=1024)
    assert "DOES NOT FIT" in tight and "biggest item" in tight
    roomy = dry_run_report(cfg, jax.devices(), device_bytes=64 * mp.GiB)
    assert roomy.count("-> fits") == len(cfg.stage_order)
    assert model_config_only("tiny") == dec.DecoderConfig.tiny(vocab_size=264, max_len=1024)
    with pytest.raises(FileNotFoundError, match="config.model='/no/such/model'"):
        model_config_only("/no/such/model")


def test_dry_run_mistral_on_8_simulated_devices():
    """configs/llm.py:mistral_ultrafeedback's dry run on 8 CPU devices (mesh fsdp=-1, tensor=4
    -> fsdp 2 × tensor 4) with Mistral-7B shapes in bfloat16 and an 80 GiB device limit."""
    script = (
        "import jax\n"
        "from configs.llm import get_config\n"
        "from llm.dry_run import dry_run_report\n"
        "from modeseek import decoder as dec\n"
        "model = dec.DecoderConfig.mistral_7b(dtype='bfloat16', param_dtype='bfloat16')\n"
        "cfg = get_config('mistral_ultrafeedback')\n"
        "cfg.param_dtype = 'bfloat16'\n"
        "print(dry_run_report(cfg, jax.devices(),\n"
        "                     model_config=model, device_bytes=80 * 1024**3))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = out.stdout
    assert "8 cpu devices, mesh {'data': 1, 'fsdp': 2, 'tensor': 4}" in report
    assert "7,241.7M parameters" in report
    for name in ("sft", "reward_model", "offline_dpo", "pref_ft", "onpolicy_dpo"):
        assert f"({name})" in report
    # bf16 parameters split 8 ways: 7,241,732,096 · 2 / 8 B = 1.686 GiB on every device
    assert "parameters             1.686" in report
    assert "-> fits" in report or "DOES NOT FIT" in report


def test_check_stage_fits_prints_and_raises(capsys):
    cfg = get_config("tiny")
    mesh = shd.make_mesh(1, 1, 1)
    base = model_config_only("tiny")
    plan = check_stage_fits(cfg, cfg.stages.onpolicy_dpo, mesh, base)  # CPU: no limit known
    printed = capsys.readouterr().out
    assert "memory plan per device (onpolicy_dpo)" in printed and "MiB" in printed
    assert plan.reference_model == plan.parameters > 0 and plan.kv_cache > 0
    # the reward model is the reward_model stage's scalar model (decoder + float32 head)
    assert plan.reward_model > plan.parameters
    with pytest.raises(mp.MemoryPlanError, match="stage onpolicy_dpo: .*biggest item"):
        check_stage_fits(cfg, cfg.stages.onpolicy_dpo, mesh, base, device_bytes=1024)
