"""Data files: a lone surrogate or a 100k-deep JSON line fails with file:line (and with
skip_bad_rows is skipped and counted), a corrupt Parquet file is named, train_rows < 0 and
batch_size < 1 are errors naming the field."""

import json

import pytest

from llm import data
from llm.byte_tokenizer import ByteTokenizer

GOOD = {"prompt": "Say hi", "chosen": "hi", "rejected": "hello there"}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad_line, field, reason", [
    ('{"prompt": "a\\ud800b", "chosen": "x", "rejected": "y"}', "prompt", "invalid Unicode"),
    ('{"prompt": "p", "chosen": "x", "rejected": "\\udfff"}', "rejected", "invalid Unicode"),
    ('{"prompt": [{"role": "user", "content": "\\ud83d"}], "chosen": "x", "rejected": "y"}',
     "prompt[0].content", "invalid Unicode"),
    ("[" * 100_000 + "]" * 100_000, None, "invalid JSON"),
    ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", None, "invalid JSON"),
])
def test_lone_surrogate_and_deep_json_name_file_and_line(tmp_path, bad_line, field, reason):
    path = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), bad_line, json.dumps(GOOD)])
    with pytest.raises(data.BadRowError, match=f"d.jsonl:2: .*{reason}") as e:
        data.read_preference_file(path)
    assert (e.value.source, e.value.field, e.value.reason) == (f"{path}:2", field, reason)
    rows, stats = data.read_preference_file(path, skip_bad_rows=True)
    assert len(rows) == 2 and stats["rows_skipped"] == 1
    assert stats["skipped_by_reason"] == {reason: 1}
    # the kept rows tokenise: nothing unencodable reaches the tokenizer
    _, loader_stats = data.make_loader(path, ByteTokenizer(), batch_size=1, max_prompt_len=16,
                                       max_response_len=16, skip_bad_rows=True, num_threads=0)
    assert loader_stats["rows_kept"] == 2


def test_corrupt_parquet_names_the_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD] * 3), path)
    assert len(data.read_preference_file(path)[0]) == 3
    raw = path.read_bytes()
    path.write_bytes(raw[:4] + b"\x00" * (len(raw) - 8) + raw[-4:])  # header/footer magic kept
    for skip in (False, True):  # a whole unreadable file is never "skipped"
        with pytest.raises(data.DataFileError, match=r"pairs\.parquet: not a readable Parquet"):
            data.read_preference_file(path, skip_bad_rows=skip)
    path.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(data.DataFileError, match=r"pairs\.parquet: not a readable Parquet .*"
                                                 "at the start"):
        data.read_preference_file(path)


def test_train_rows_must_be_a_count_of_existing_rows():
    rows = [dict(GOOD, source=f"f:{i}") for i in range(5)]
    assert data.take_rows(rows, 0) == rows
    assert data.take_rows(rows, 2) == rows[:2]
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="^train_rows must be an integer >= 0"):
            data.take_rows(rows, bad)
    with pytest.raises(ValueError, match="train_rows=6 but train.jsonl has only 5"):
        data.take_rows(rows, 6, source="train.jsonl")


@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_loader_batch_size_must_be_positive(tmp_path, batch_size):
    path = _write(tmp_path / "d.jsonl", [json.dumps(GOOD)] * 4)
    with pytest.raises(ValueError, match="^batch_size must be an integer >= 1"):
        data.make_loader(path, ByteTokenizer(), batch_size=batch_size, max_prompt_len=8,
                         max_response_len=8)
