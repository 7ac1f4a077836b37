"""Tests of llm.data: reading, TFDS round trips, bad rows, tokenisation, grain loaders."""

import json
import re
import sys

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import llm.data as data
from llm.data import min_length

SPECIALS = ["[PAD]", "[EOS]", "[UNK]", "[BOS]", "<|system|>", "<|user|>", "<|assistant|>"]


class TinyTokenizer:
    """The tokenizer interface llm.data codes against, over an in-memory HF WordLevel model."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pad_id, self.eos_id = tok.token_to_id("[PAD]"), tok.token_to_id("[EOS]")
        self.bos_id = tok.token_to_id("[BOS]")

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def id(self, word):
        return self.tok.token_to_id(word)


class ChatTinyTokenizer(TinyTokenizer):
    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "[BOS] " + " ".join(f"<|{m['role']}|> {m['content']}" for m in messages)
        return text + (" <|assistant|>" if add_generation_prompt else "")


@pytest.fixture(scope="module")
def tok_model():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rows, _ = data.read_preference_file(data.default_dataset_path())
    texts = [r[k] if k != "prompt" else r[k][0]["content"] for r in rows for k in
             ("prompt", "chosen", "rejected")] + ["Hello world ! é"]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return tok


@pytest.fixture(scope="module")
def tokenizer(tok_model):
    return TinyTokenizer(tok_model)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"prompt": "Describe a cat.", "chosen": "A cat is curious.", "rejected": "A cat is loyal.",
     "chosen_score": -4, "rejected_score": -4.5},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é"}],
     "chosen": "Hello world !", "rejected": "Hello !", "chosen_score": 1.0, "rejected_score": 0},
    {"prompt": "Tell me about a dog.",
     "chosen": [{"role": "user", "content": "Tell me about a dog."},
                {"role": "assistant", "content": "A dog is loyal."}],
     "rejected": [{"role": "user", "content": "Tell me about a dog."},
                  {"role": "assistant", "content": "A dog is loyal. A dog is loyal."}],
     "chosen_score": 2, "rejected_score": 1, "extra_column": "ignored"},
]


def test_reads_schemas_and_chat_messages(tmp_path):
    rows, stats = data.read_preference_file(write_jsonl(tmp_path / "p.jsonl", ROWS))
    assert stats["rows_kept"] == 3 and stats["has_scores"]
    assert stats["ignored_columns"] == ["extra_column"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Describe a cat."}]
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[2]["prompt"] == [{"role": "user", "content": "Tell me about a dog."}]
    assert rows[2]["chosen"] == "A dog is loyal." and rows[2]["rejected"].count("loyal") == 2
    assert rows[0]["rejected_score"] == -4.5 and rows[0]["source"].endswith("p.jsonl:1")
    authors = [{"prompt": "x", "y_w": "short", "y_l": "longer one", "y_w_score": 3,
                "y_l_score": 1}, {"prompt": "z", "y_w": "a", "y_l": "b", "y_w_score": 0,
                                  "y_l_score": 0}]
    rows, stats = data.read_preference_file(write_jsonl(tmp_path / "a.jsonl", authors))
    assert rows[0] == {"prompt": [{"role": "user", "content": "x"}], "chosen": "short",
                       "rejected": "longer one", "chosen_score": 3.0, "rejected_score": 1.0,
                       "source": f"{tmp_path / 'a.jsonl'}:1"}
    ultra = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8.5,
              "score_rejected": 2}]
    rows, _ = data.read_preference_file(write_jsonl(tmp_path / "u.jsonl", ultra))
    assert rows[0]["chosen_score"] == 8.5
    prompts, stats = data.read_prompt_file(tmp_path / "p.jsonl")
    assert [p["prompt"] for p in prompts][0][0]["content"] == "Describe a cat."
    assert stats["ignored_columns"] == ["chosen", "chosen_score", "extra_column", "rejected",
                                        "rejected_score"]


def _prepare_and_compare(source_file, tmp_path, name):
    want, _ = data.read_preference_file(source_file)
    out_dir, meta = data.prepare_tfds({"train": source_file, "test": source_file},
                                      tmp_path / "tfds", name=name)
    assert meta["kind"] == "pairs" and meta["has_scores"]
    for split in ("train", "test"):
        got, meta2 = data.load_prepared(out_dir, split)
        assert meta2["stats"][split]["rows_kept"] == len(want)
        assert [got[i] for i in range(len(got))] == want
    return out_dir


def test_tfds_round_trip_jsonl_without_tensorflow(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", ROWS)
    _prepare_and_compare(src, tmp_path, "jsonl")
    assert "tensorflow" not in sys.modules


def test_tfds_round_trip_parquet_and_reuse(tmp_path):
    flat = [{k: v for k, v in r.items() if k != "extra_column"} for r in ROWS]
    for r in flat:  # a Parquet column has one type: plain strings here, message lists below
        r["prompt"] = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
        for k in ("chosen", "rejected"):
            r[k] = r[k] if isinstance(r[k], str) else r[k][-1]["content"]
        r["chosen_score"], r["rejected_score"] = float(r["chosen_score"]), float(
            r["rejected_score"])
    src = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(flat), src)
    out_dir = _prepare_and_compare(src, tmp_path, "pq")
    again, _ = data.prepare_tfds({"train": src, "test": src}, tmp_path / "tfds", name="pq")
    assert again == out_dir  # unchanged sources: reused
    pq.write_table(pa.Table.from_pylist(flat[:2]), src)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        data.prepare_tfds({"train": src, "test": src}, tmp_path / "tfds", name="pq")
    data.prepare_tfds({"train": src, "test": src}, tmp_path / "tfds", name="pq", overwrite=True)
    assert len(data.load_prepared(out_dir, "train")[0]) == 2


def test_parquet_message_lists(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}]
    src = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    got, stats = data.read_preference_file(src)
    assert got[0]["prompt"] == [{"role": "user", "content": "q"}] and not stats["has_scores"]


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}
CHAT = [{"role": "user", "content": "p"}]
BAD_ROWS = {
    "invalid JSON": ('{"prompt": "p", "chosen": ', None),
    "non-UTF-8 bytes": (b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}', None),
    "missing field": ({"prompt": "p", "chosen": "a"}, "rejected"),
    "empty text": ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt"),
    "chosen equals rejected": ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected"),
    "wrong type": ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen"),
    "inconsistent conversation": (
        {"chosen": CHAT + [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        "rejected"),
    "scores on some rows only": ({**GOOD, "chosen_score": 1, "rejected_score": 0},
                                 "chosen_score"),
}


def _bad_file(tmp_path, reason):
    bad, _ = BAD_ROWS[reason]
    lines = [json.dumps(GOOD).encode(), b"", json.dumps(GOOD).encode()]
    lines.append(bad if isinstance(bad, bytes) else
                 (bad if isinstance(bad, str) else json.dumps(bad)).encode())
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines + [json.dumps(GOOD).encode()]) + b"\n")
    return path


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_row_errors_name_file_line_and_field(tmp_path, reason):
    path = _bad_file(tmp_path, reason)
    with pytest.raises(data.BadRowError) as e:
        data.read_preference_file(path)
    field = BAD_ROWS[reason][1]
    assert str(e.value).startswith(f"{path}:4: ")  # line 2 is blank, the bad row is line 4
    assert e.value.reason == reason and e.value.field == field
    if field:
        assert f"field '{field}'" in str(e.value)


def test_skip_mode_counts_every_bad_row(tmp_path, caplog):
    lines = [json.dumps(GOOD)]
    for reason in sorted(BAD_ROWS):
        bad = BAD_ROWS[reason][0]
        lines.append(bad.decode("latin-1") if isinstance(bad, bytes) else
                     bad if isinstance(bad, str) else json.dumps(bad))
    path = tmp_path / "mixed.jsonl"
    body = "\n".join(lines).encode("utf-8").replace("ÿþ".encode(), b"\xff\xfe")
    path.write_bytes(body + b"\n")
    rows, stats = data.read_preference_file(path, skip_bad_rows=True)
    assert len(rows) == 1 and stats["rows_read"] == 1 + len(BAD_ROWS)
    assert stats["rows_skipped"] == len(BAD_ROWS)
    assert stats["skipped_by_reason"] == {r: 1 for r in BAD_ROWS}
    logged = [r.getMessage() for r in caplog.records if "skipping bad row" in r.getMessage()]
    assert len(logged) == len(BAD_ROWS) and f"{path}:2: " in logged[0]
    _, stats = data.prepare_tfds(path, tmp_path / "tfds", name="skip", skip_bad_rows=True)
    assert stats["stats"]["train"]["rows_skipped"] == len(BAD_ROWS)


def test_parquet_bad_row_names_row_number(tmp_path):
    src = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD, {**GOOD, "chosen": ""}]), src)
    with pytest.raises(data.BadRowError, match=r"b.parquet:3: field 'chosen': empty text"):
        data.read_preference_file(src)
    table = pa.table({"prompt": [b"p", b"q"], "chosen": [b"a", b"\xff"], "rejected": [b"b"] * 2})
    pq.write_table(table, src)
    with pytest.raises(data.BadRowError, match=r"b.parquet:2: field 'chosen': non-UTF-8 bytes"):
        data.read_preference_file(src)
    rows, stats = data.read_preference_file(src, skip_bad_rows=True)
    assert rows[0]["chosen"] == "a" and stats["skipped_by_reason"] == {"non-UTF-8 bytes": 1}


def test_encoder_hand_example(tokenizer):
    ids = {w: tokenizer.id(w) for w in ["Describe", "a", "cat", ".", "A", "is", "curious",
                                         "loyal", "[PAD]", "[EOS]"]}
    row = {"prompt": [{"role": "user", "content": "Describe a cat."}],
           "chosen": "A cat is curious.", "rejected": "A cat is loyal. A cat is curious.",
           "source": "hand:1"}
    enc = data.Encoder(tokenizer, max_prompt_len=6, max_response_len=7)
    out = enc(row)
    pad, eos = ids["[PAD]"], ids["[EOS]"]
    np.testing.assert_array_equal(
        out["prompt_tokens"], [pad, pad, ids["Describe"], ids["a"], ids["cat"], ids["."]])
    np.testing.assert_array_equal(out["prompt_mask"], [0, 0, 1, 1, 1, 1])
    want_chosen = [ids["A"], ids["cat"], ids["is"], ids["curious"], ids["."], eos, pad]
    np.testing.assert_array_equal(out["chosen_tokens"], want_chosen)
    np.testing.assert_array_equal(out["chosen_mask"], [1, 1, 1, 1, 1, 1, 0])  # EOS counts
    # Rejected has 10 tokens + EOS: cut from the right, keeps its first 7, EOS lost.
    np.testing.assert_array_equal(out["rejected_tokens"], [ids[w] for w in
                                  ["A", "cat", "is", "loyal", ".", "A", "cat"]])
    assert out["rejected_mask"].all() and out["prompt_tokens"].dtype == np.int32
    # Prompt cut from the left: keeps the end of the prompt.
    short = data.Encoder(tokenizer, max_prompt_len=2, max_response_len=7)(row)
    np.testing.assert_array_equal(short["prompt_tokens"], [ids["cat"], ids["."]])
    assert (out["chosen_tokens"][~out["chosen_mask"]] == pad).all()


def test_chat_template_and_bos(tok_model):
    tok = ChatTinyTokenizer(tok_model)
    row = {"prompt": [{"role": "user", "content": "Describe a cat."}], "chosen": "[BOS] A cat.",
           "rejected": "A dog.", "source": "s:1"}
    out = data.Encoder(tok, max_prompt_len=8, max_response_len=4)(row)
    words = ["[BOS]", "<|user|>", "Describe", "a", "cat", ".", "<|assistant|>"]
    np.testing.assert_array_equal(out["prompt_tokens"][1:], [tok.id(w) for w in words])
    np.testing.assert_array_equal(out["chosen_tokens"],
                                  [tok.id(w) for w in ["A", "cat", ".", "[EOS]"]])
    plain = data.Encoder(tok, max_prompt_len=8, max_response_len=4, use_chat_template=False)(row)
    assert plain["prompt_mask"].sum() == 4


def test_system_prompt_opens_prompts_without_one(tok_model):
    tok = ChatTinyTokenizer(tok_model)
    user = [{"role": "user", "content": "Describe a cat."}]
    own = [{"role": "system", "content": "a dog ."}, *user]
    enc = data.Encoder(tok, max_prompt_len=12, max_response_len=4, system_prompt="a cat .")
    for prompt, system in ((user, "a cat ."), (own, "a dog .")):  # the row's own turn wins
        out = enc({"prompt": prompt, "chosen": "A cat.", "rejected": "A dog.", "source": "s:1"})
        words = ["[BOS]", "<|system|>", *system.split(), "<|user|>", "Describe", "a", "cat",
                 ".", "<|assistant|>"]
        ids = out["prompt_tokens"][out["prompt_mask"]]
        np.testing.assert_array_equal(ids, [tok.id(w) for w in words])
    assert data.with_system_prompt(user, "") is user


def test_overlong_and_identical_after_truncation(tokenizer):
    row = {"prompt": [{"role": "user", "content": "Describe a cat."}],
           "chosen": "A cat is curious.", "rejected": "A cat is loyal.", "source": "f.jsonl:7"}
    with pytest.raises(data.BadRowError, match="f.jsonl:7: field 'prompt': over-long prompt"):
        data.Encoder(tokenizer, max_prompt_len=3, max_response_len=9, truncate_prompt=False)(row)
    with pytest.raises(data.BadRowError, match="field 'chosen': over-long response"):
        data.Encoder(tokenizer, max_prompt_len=9, max_response_len=3,
                     truncate_response=False)(row)
    with pytest.raises(data.BadRowError, match="field 'rejected': identical after truncation"):
        data.Encoder(tokenizer, max_prompt_len=9, max_response_len=3)(row)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out, _ = data.prepare_tfds(
        {"train": data.default_dataset_path("train"), "test": data.default_dataset_path("test")},
        tmp_path_factory.mktemp("tfds"), name="min_length")
    return out


def test_loader_shapes_and_state_round_trip(prepared, tokenizer):
    kw = dict(batch_size=8, max_prompt_len=16, max_response_len=128, seed=3, num_epochs=2)
    it, stats = data.make_loader(prepared, tokenizer, **kw)
    assert stats["rows_kept"] == min_length.NUM_TRAIN and stats["batches_per_epoch"] == 45
    first = next(it)
    assert {k: v.shape for k, v in first.items()} == {
        "prompt_tokens": (8, 16), "prompt_mask": (8, 16), "chosen_tokens": (8, 128),
        "chosen_mask": (8, 128), "rejected_tokens": (8, 128), "rejected_mask": (8, 128),
        "chosen_score": (8,), "rejected_score": (8,), "row_index": (8,)}
    assert first["chosen_mask"].dtype == bool and first["chosen_score"].dtype == np.float32
    # Min Length: chosen is shorter in tokens too, and the gold reward is -words.
    assert (first["chosen_mask"].sum(1) < first["rejected_mask"].sum(1)).all()
    assert (first["chosen_score"] > first["rejected_score"]).all()
    _take(it, 43)  # state saved just before the epoch boundary
    state = it.get_state()
    want = _take(it, 5)
    it2, _ = data.make_loader(prepared, tokenizer, **kw)
    it2.set_state(json.loads(json.dumps(state)))  # the state survives JSON
    _assert_batches_equal(_take(it2, 5), want)
    # An uninterrupted run: 2 epochs of 45 full batches, each epoch a new permutation.
    full = list(data.make_loader(prepared, tokenizer, **kw)[0])
    assert len(full) == 90
    _assert_batches_equal(full[:1] + full[44:49], [first] + want)
    epochs = [np.concatenate([b["row_index"] for b in full[i:i + 45]]) for i in (0, 45)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(min_length.NUM_TRAIN))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(min_length.NUM_TRAIN))


def test_sharding_is_disjoint(prepared, tokenizer):
    seen = []
    for index in range(2):
        opts = grain.sharding.ShardOptions(shard_index=index, shard_count=2, drop_remainder=True)
        it, stats = data.make_loader(prepared, tokenizer, batch_size=10, max_prompt_len=16,
                                     max_response_len=64, split="test", num_epochs=1,
                                     shard_options=opts)
        seen.append(np.concatenate([b["row_index"] for b in it]))
        assert stats["rows_in_shard"] == min_length.NUM_TEST // 2
    assert len(seen[0]) == len(seen[1]) == 30
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(min_length.NUM_TEST))


def test_loader_skips_rows_that_fail_tokenisation(tmp_path, tokenizer):
    rows = [{"prompt": "Describe a cat.", "chosen": "A cat.", "rejected": "A cat is loyal."}] * 3
    rows += [{"prompt": "Describe a cat.", "chosen": "A cat is curious.",
              "rejected": "A cat is loyal."}]  # identical once cut to 3 tokens
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    kw = dict(batch_size=1, max_prompt_len=8, max_response_len=3,
              shard_options=grain.sharding.NoSharding())
    with pytest.raises(data.BadRowError, match=r"t.jsonl:4: field 'rejected'"):
        data.make_loader(src, tokenizer, **kw)
    it, stats = data.make_loader(src, tokenizer, skip_bad_rows=True, num_epochs=1, **kw)
    assert stats["rows_skipped"] == 1 and stats["skipped_by_reason"] == {
        "identical after truncation": 1}
    assert sorted(int(b["row_index"][0]) for b in it) == [0, 1, 2]


def test_prompt_only_loader(tmp_path, tokenizer, prepared):
    src = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "Describe a cat."},
                                             {"prompt": "Tell me about a dog."}])
    kw = dict(batch_size=2, max_prompt_len=6, num_epochs=1, shuffle=False,
              shard_options=grain.sharding.NoSharding())
    (batch,) = list(data.make_loader(src, tokenizer, prompts_only=True, **kw)[0])
    assert sorted(batch) == ["prompt_mask", "prompt_tokens", "row_index"]
    np.testing.assert_array_equal(batch["prompt_mask"].sum(1), [4, 6])
    with pytest.raises(data.BadRowError, match="field 'chosen': missing field"):
        data.make_loader(src, tokenizer, max_response_len=4, **kw)
    it, _ = data.make_loader(prepared, tokenizer, prompts_only=True, **kw)
    assert next(it)["prompt_tokens"].shape == (2, 6)
    out_dir, meta = data.prepare_tfds(src, tmp_path / "tfds", name="q", kind="prompts")
    assert meta["kind"] == "prompts" and not meta["has_scores"]
    with pytest.raises(ValueError, match="prompts_only=True"):
        data.make_loader(out_dir, tokenizer, max_response_len=4, **kw)
    (again,) = list(data.make_loader(out_dir, tokenizer, prompts_only=True, **kw)[0])
    _assert_batches_equal([again], [batch])


def test_embedded_dataset_is_the_generator_output():
    for split, n in (("train", min_length.NUM_TRAIN), ("test", min_length.NUM_TEST)):
        with open(data.default_dataset_path(split), encoding="utf-8") as f:
            assert f.read() == min_length.dumps(min_length.generate(split, n))
    train, _ = data.read_preference_file(data.default_dataset_path("train"))
    test, _ = data.read_preference_file(data.default_dataset_path("test"))
    for r in train + test:
        assert r["chosen_score"] == -len(r["chosen"].split()) > r["rejected_score"]
    assert len({r["prompt"][0]["content"] for r in train}) > 100
    held_out = [s[0] for s in min_length.SUBJECTS[-min_length.NUM_TEST_SUBJECTS:]]
    has_held_out = lambda r: any(re.search(rf"\b{s}\b", r["prompt"][0]["content"])
                                 for s in held_out)
    assert all(has_held_out(r) for r in test) and not any(has_held_out(r) for r in train)


def test_loader_state_in_orbax_checkpoint(tmp_path, tokenizer):
    ocp = pytest.importorskip("orbax.checkpoint")
    kw = dict(batch_size=4, max_prompt_len=16, max_response_len=128, seed=7,
              shard_options=grain.sharding.NoSharding())
    it, _ = data.make_loader(data.default_dataset_path("test"), tokenizer, **kw)
    _take(it, 3)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt")
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 20)  # crosses the epoch boundary (15 batches per epoch)
    resumed, _ = data.make_loader(data.default_dataset_path("test"), tokenizer, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    _assert_batches_equal(_take(resumed, 20), want)
