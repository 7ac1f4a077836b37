"""Reading preference and prompt rows from local JSONL or Parquet files.

Accepted row schemas (one JSON object per line, or one Parquet row):

* ``prompt, chosen, rejected`` with optional ``chosen_score, rejected_score``
  (``score_chosen, score_rejected`` are accepted as aliases, as in UltraFeedback-binarized);
* the authors' schema ``prompt, y_w, y_l`` with optional ``y_w_score, y_l_score``;
* chat-message lists: ``prompt`` may be a list of ``{"role", "content"}`` dicts, and
  ``chosen``/``rejected`` may be conversations whose **last** message is the assistant
  response. The messages before it are the context; chosen and rejected contexts must be
  equal, and when not empty they are the prompt (a ``prompt`` column, if present, must then equal
  that context, or, as a string, the content of its last user message);
* prompt-only files (``kind="prompts"``): only ``prompt`` is read.

Every row is normalised to a plain dict::

    {"prompt": [{"role": ..., "content": ...}, ...],   # a string prompt becomes one user turn
     "chosen": str, "rejected": str,                    # the response texts (pairs only)
     "chosen_score": float, "rejected_score": float,    # only when the file has scores
     "source": "path:line"}

Bad rows (invalid JSON, JSON nested too deeply, non-UTF-8 bytes, lone surrogates, a missing
column, empty text, a wrong type, chosen == rejected, inconsistent conversations, scores on
some rows only) raise :class:`BadRowError`
naming file, line (1-based; for Parquet the 1-based row number) and field, or, with
``skip_bad_rows=True``, are skipped, counted by reason in the returned stats and logged. Columns
outside the schema are ignored and listed in ``stats["ignored_columns"]``. A file that cannot
be read at all (corrupt Parquet) raises :class:`DataFileError` naming it, with or without
``skip_bad_rows``. ``take_rows(rows, train_rows)`` selects the first rows of a split.
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Iterator
from typing import Any

from absl import logging
from etils import epath

PROMPT = "prompt"
# (chosen, rejected, chosen score, rejected score) column names, per schema.
PAIR_SCHEMAS = {
    "chosen_rejected": ("chosen", "rejected", "chosen_score", "rejected_score"),
    "authors": ("y_w", "y_l", "y_w_score", "y_l_score"),
}
SCORE_ALIASES = {"score_chosen": "chosen_score", "score_rejected": "rejected_score"}
KINDS = ("pairs", "prompts")


class BadRowError(ValueError):
    """A malformed input row; ``str(e)`` reads ``path:line: field 'f': reason``."""

    def __init__(self, source: str, field: str | None, reason: str, detail: str = ""):
        self.source, self.field, self.reason, self.detail = source, field, reason, detail
        where = f"field '{field}': " if field else ""
        super().__init__(f"{source}: {where}{reason}" + (f" ({detail})" if detail else ""))


class DataFileError(ValueError):
    """A whole data file is unreadable (e.g. corrupt Parquet); never skipped by skip_bad_rows."""


def new_stats(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "rows_read": 0,
        "rows_kept": 0,
        "rows_skipped": 0,
        "skipped_by_reason": {},
        "blank_lines": 0,
        "ignored_columns": [],
        "has_scores": False,
    }


MAX_LOGGED_SKIPS = 20


def record_skip(stats: dict[str, Any], err: BadRowError) -> None:
    """Counts a skipped row by reason; logs the first MAX_LOGGED_SKIPS, then only counts."""
    stats["rows_skipped"] += 1
    reasons = collections.Counter(stats["skipped_by_reason"])
    reasons[err.reason] += 1
    stats["skipped_by_reason"] = dict(sorted(reasons.items()))
    if stats["rows_skipped"] <= MAX_LOGGED_SKIPS:
        logging.warning("skipping bad row: %s", err)
    if stats["rows_skipped"] == MAX_LOGGED_SKIPS:
        logging.warning("further bad rows are counted in the stats, not logged one by one")


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """Yields (1-based line, parsed object | BadRowError | None for a blank line)."""
    with epath.Path(path).open("rb") as f:  # local or object-store (gs://) files
        for line_no, raw in enumerate(f, start=1):
            source = f"{path}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, BadRowError(source, None, "non-UTF-8 bytes", str(e))
                continue
            if not text.strip():
                yield line_no, None
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, BadRowError(source, None, "invalid JSON", str(e))
            except RecursionError:
                yield line_no, BadRowError(source, None, "invalid JSON", "nested too deeply")


def _iter_parquet(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_no = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for batch in batches:
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
    except (pa.ArrowException, OSError) as e:
        where = f"after row {row_no}" if row_no else "at the start"
        raise DataFileError(f"{path}: not a readable Parquet file ({where}): "
                            f"{type(e).__name__}: {e}") from None


def iter_raw_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yields (1-based line or row, raw value) from a ``.jsonl``/``.json`` or ``.parquet`` file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return _iter_jsonl(path)
    if ext in (".parquet", ".pq"):
        return _iter_parquet(path)
    raise ValueError(f"{path}: unsupported extension {ext!r}; expected .jsonl or .parquet")


def _text(value: Any, source: str, field: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRowError(source, field, "non-UTF-8 bytes", str(e)) from None
    if not isinstance(value, str):
        raise BadRowError(source, field, "wrong type", f"expected text, got {type(value).__name__}")
    try:  # JSON escapes can spell lone surrogates ("\ud800"), which no tokenizer can encode
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRowError(source, field, "invalid Unicode", f"lone surrogate at character "
                          f"{e.start}") from None
    if not value.strip():
        raise BadRowError(source, field, "empty text")
    return value


def _messages(value: Any, source: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list | tuple) or not value:
        raise BadRowError(source, field, "wrong type", "expected a non-empty message list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRowError(source, f"{field}[{i}]", "wrong type", "expected {role, content}")
        role = _text(m["role"], source, f"{field}[{i}].role")
        content = m["content"]
        if isinstance(content, bytes | str):
            content = _text(content, source, f"{field}[{i}].content") if content else ""
        if not isinstance(content, str):
            raise BadRowError(source, f"{field}[{i}].content", "wrong type", "expected text")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise BadRowError(source, field, "empty text")
    return out


def _prompt(value: Any, source: str) -> list[dict[str, str]]:
    if isinstance(value, list | tuple):
        return _messages(value, source, PROMPT)
    return [{"role": "user", "content": _text(value, source, PROMPT)}]


def _response(value: Any, source: str, field: str) -> tuple[list[dict[str, str]], str]:
    """Returns (context messages, response text) of a chosen/rejected value."""
    if isinstance(value, list | tuple):
        msgs = _messages(value, source, field)
        if msgs[-1]["role"] != "assistant":
            raise BadRowError(source, field, "wrong type", "last message must be the assistant's")
        return msgs[:-1], _text(msgs[-1]["content"], source, f"{field}[-1].content")
    return [], _text(value, source, field)


def _score(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRowError(source, field, "wrong type", f"expected a finite number, got {value!r}")
    return float(value)


def _missing(source: str, field: str) -> BadRowError:
    return BadRowError(source, field, "missing field")


def parse_row(row: Any, source: str, kind: str) -> dict[str, Any]:
    """Normalises one raw row (see module docstring); raises BadRowError."""
    if not isinstance(row, dict):
        got = type(row).__name__
        raise BadRowError(source, None, "wrong type", f"expected an object, got {got}")
    row = {SCORE_ALIASES.get(k, k): v for k, v in row.items()}
    if kind == "prompts":
        if row.get(PROMPT) is None:
            raise _missing(source, PROMPT)
        return {"prompt": _prompt(row[PROMPT], source), "source": source}
    present = [s for s, cols in PAIR_SCHEMAS.items() if cols[0] in row or cols[1] in row]
    if len(present) > 1:
        raise BadRowError(source, "y_w", "wrong type", "row mixes chosen/rejected and y_w/y_l")
    c_col, r_col, cs_col, rs_col = PAIR_SCHEMAS[present[0] if present else "chosen_rejected"]
    for col in (c_col, r_col):
        if row.get(col) is None:
            raise _missing(source, col)
    c_ctx, chosen = _response(row[c_col], source, c_col)
    r_ctx, rejected = _response(row[r_col], source, r_col)
    if c_ctx != r_ctx:
        raise BadRowError(source, r_col, "inconsistent conversation", "contexts differ")
    if c_ctx:
        prompt = c_ctx
        if row.get(PROMPT) is not None:
            given = row[PROMPT]
            users = [m["content"] for m in c_ctx if m["role"] == "user"]
            ok = _prompt(given, source) == c_ctx if isinstance(given, list | tuple) else (
                bool(users) and _text(given, source, PROMPT) == users[-1])
            if not ok:
                raise BadRowError(source, PROMPT, "inconsistent conversation",
                                  f"prompt differs from the context in '{c_col}'")
    elif row.get(PROMPT) is None:
        raise _missing(source, PROMPT)
    else:
        prompt = _prompt(row[PROMPT], source)
    if chosen == rejected:
        raise BadRowError(source, r_col, "chosen equals rejected")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": source}
    scores = [row.get(cs_col), row.get(rs_col)]
    if any(s is not None for s in scores):
        for key, col, s in zip(("chosen_score", "rejected_score"), (cs_col, rs_col), scores):
            if s is None:
                raise _missing(source, col)
            out[key] = _score(s, source, col)
    return out


def _known_columns(kind: str) -> set[str]:
    if kind == "prompts":
        return {PROMPT}
    cols = {PROMPT, *SCORE_ALIASES}
    for schema in PAIR_SCHEMAS.values():
        cols.update(schema)
    return cols


def read_rows(
    path: str | os.PathLike, *, kind: str = "pairs", skip_bad_rows: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reads and normalises every row of a JSONL/Parquet file.

    Args:
      path: a ``.jsonl`` (or ``.json`` lines) or ``.parquet`` file.
      kind: ``"pairs"`` (preference pairs) or ``"prompts"`` (prompt-only, for on-policy runs).
      skip_bad_rows: skip bad rows and count them instead of raising.

    Returns:
      (rows, stats): normalised rows in file order, and a stats dict with ``rows_read``,
      ``rows_kept``, ``rows_skipped``, ``skipped_by_reason``, ``blank_lines``,
      ``ignored_columns``, ``has_scores``.

    Raises:
      BadRowError: on the first bad row unless ``skip_bad_rows``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = os.fspath(path)
    if not epath.Path(path).is_file():
        raise FileNotFoundError(path)
    stats, rows = new_stats(kind), []
    known, ignored = _known_columns(kind), set()
    has_scores = None  # decided by the first good row; later rows must agree
    for line_no, raw in iter_raw_rows(path):
        if raw is None:
            stats["blank_lines"] += 1
            continue
        stats["rows_read"] += 1
        source = f"{path}:{line_no}"
        try:
            if isinstance(raw, BadRowError):
                raise raw
            row = parse_row(raw, source, kind)
            if kind == "pairs":
                row_scores = "chosen_score" in row
                if has_scores is not None and row_scores != has_scores:
                    raise BadRowError(source, "chosen_score", "scores on some rows only",
                                      "the first good row " + ("had" if has_scores else "lacked")
                                      + " scores")
                has_scores = row_scores
        except BadRowError as e:
            if not skip_bad_rows:
                raise
            record_skip(stats, e)
            continue
        ignored.update(k for k in raw if k not in known)
        rows.append(row)
    stats["rows_kept"] = len(rows)
    stats["has_scores"] = bool(has_scores)
    stats["ignored_columns"] = sorted(ignored)
    if ignored:
        logging.info("%s: ignoring columns %s", path, stats["ignored_columns"])
    logging.info("%s: read %d rows, kept %d, skipped %d %s", path, stats["rows_read"],
                 stats["rows_kept"], stats["rows_skipped"], stats["skipped_by_reason"])
    return rows, stats


def take_rows(rows: list[dict[str, Any]], train_rows: int, *, source: str = "data"):
    """The first ``train_rows`` rows (0 = all). Negative, non-integer or more rows than the
    data holds raise ValueError naming ``train_rows`` (never a silent slice)."""
    if isinstance(train_rows, bool) or not isinstance(train_rows, int) or train_rows < 0:
        raise ValueError(f"train_rows must be an integer >= 0 (0 = all rows), got {train_rows!r}")
    if train_rows > len(rows):
        raise ValueError(f"train_rows={train_rows} but {source} has only {len(rows)} usable rows")
    return list(rows[:train_rows]) if train_rows else list(rows)


def read_preference_file(path: str | os.PathLike, *, skip_bad_rows: bool = False):
    """Preference pairs from a JSONL/Parquet file: ``read_rows(path, kind="pairs")``."""
    return read_rows(path, kind="pairs", skip_bad_rows=skip_bad_rows)


def read_prompt_file(path: str | os.PathLike, *, skip_bad_rows: bool = False):
    """Prompts from a JSONL/Parquet file: ``read_rows(path, kind="prompts")``."""
    return read_rows(path, kind="prompts", skip_bad_rows=skip_bad_rows)
