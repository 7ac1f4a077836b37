"""Tokenising normalised rows into fixed-shape numpy arrays.

Tokenizer interface (duck-typed, e.g. ``llm.tokenizer.load_tokenizer``'s result): ``encode(str)
-> list[int]``, ``decode(list[int]) -> str``, ``eos_id``, ``pad_id`` (``None`` → ``eos_id``),
optionally ``bos_id`` and ``apply_chat_template(messages, add_generation_prompt=True) -> str``.

Rules (one example; P = max_prompt_len, T = max_response_len):

* Prompt text: ``apply_chat_template(messages, add_generation_prompt=True)`` when the chat
  template is used (default: when the tokenizer has one), else the message contents joined by
  a blank line (a plain string prompt is used unchanged). Prompt ids = ``encode(text)``; a doubled
  leading BOS (template text + encoder) is reduced to one.
* System prompt: a non-empty ``system_prompt`` is put first as a ``system`` message unless the
  row's prompt already opens with one (the row's own system turn wins).
* Special-token text inside user messages or responses stays text when the tokenizer has
  ``encode_text`` and ``encode_chat`` (``llm.tokenizer.Tokenizer``): prompt ids are then
  ``encode_chat(messages)`` (template path) or [BOS] + ``encode_text(text)``, responses
  ``encode_text``; other tokenizers use ``encode``.
* Response ids = ``encode(text)`` (a leading BOS is removed) followed by ``eos_id``
  (``append_eos=True``), so that stopping is learned and counted.
* Truncation: a prompt longer than P keeps its **last** P tokens (cut from the LEFT: the end of
  the prompt, next to the response, is what conditions it); a response longer than T keeps its
  **first** T tokens (cut from the RIGHT; the EOS is then lost). With ``truncate_prompt=False`` /
  ``truncate_response=False`` such rows are bad rows ("over-long prompt/response") instead.
  If truncation makes chosen and rejected identical, the row is bad ("identical after
  truncation"): it carries no preference any more.
* Layout: prompts are LEFT-padded to [P] (padding first), responses RIGHT-padded to [T], so
  ``concat(prompt, response)`` is contiguous text followed by padding. Token arrays are int32 and
  padded with ``pad_id``; masks are bool and True exactly on real tokens. Response masks cover
  the response tokens including EOS: never padding, never prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llm.data.records import BadRowError


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """`messages` opened by a system turn holding `system_prompt` (unchanged when it is empty
    or the messages already open with a system turn)."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def pad_id_of(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_id", None)
    return int(tokenizer.eos_id if pad is None else pad)


def prompt_text(tokenizer, messages: list[dict[str, str]], use_chat_template: bool | None) -> str:
    """The prompt string fed to ``encode`` (see module docstring)."""
    template = getattr(tokenizer, "apply_chat_template", None)
    if use_chat_template is None:
        use_chat_template = template is not None
    if use_chat_template:
        if template is None:
            raise ValueError("use_chat_template=True but the tokenizer has no apply_chat_template")
        return template(messages, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


def _strip_bos(tokenizer, ids: list[int], keep: int) -> list[int]:
    bos = getattr(tokenizer, "bos_id", None)
    while bos is not None and len(ids) > keep and ids[0] == bos and (keep == 0 or ids[1] == bos):
        ids = ids[1:]
    return ids


def _uses_template(tokenizer, use_chat_template: bool | None) -> bool:
    return (getattr(tokenizer, "apply_chat_template", None) is not None
            if use_chat_template is None else use_chat_template)


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_id", None)
    return bos is not None and list(tokenizer.encode("a"))[:1] == [bos]


def encode_prompt(tokenizer, messages, *, use_chat_template: bool | None = None) -> list[int]:
    """Prompt ids. With ``encode_chat`` / ``encode_text`` (``llm.tokenizer.Tokenizer``) message
    text never turns into control tokens: only the template writes them (no prompt
    injection through ``<|im_end|>`` in user text)."""
    if _uses_template(tokenizer, use_chat_template) and hasattr(tokenizer, "encode_chat"):
        ids = list(tokenizer.encode_chat(messages, add_generation_prompt=True))
    elif not _uses_template(tokenizer, use_chat_template) and hasattr(tokenizer, "encode_text"):
        text = prompt_text(tokenizer, messages, False)
        bos = [int(tokenizer.bos_id)] if _adds_bos(tokenizer) else []
        ids = bos + list(tokenizer.encode_text(text))
    else:
        ids = list(tokenizer.encode(prompt_text(tokenizer, messages, use_chat_template)))
    return _strip_bos(tokenizer, ids, keep=1)


def encode_response(tokenizer, text: str, *, append_eos: bool = True) -> list[int]:
    """Response ids, then ``eos_id``: the only EOS; "<|im_end|>" written inside the response
    text stays text when the tokenizer has ``encode_text``."""
    encode = getattr(tokenizer, "encode_text", tokenizer.encode)
    ids = _strip_bos(tokenizer, list(encode(text)), keep=0)
    return ids + [int(tokenizer.eos_id)] if append_eos else ids


def pad_left(ids: list[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """([length] int32 tokens, [length] bool mask) with ``ids`` at the right end."""
    tokens = np.full(length, pad_id, np.int32)
    mask = np.zeros(length, bool)
    if ids:
        tokens[length - len(ids):] = ids
        mask[length - len(ids):] = True
    return tokens, mask


def pad_right(ids: list[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """([length] int32 tokens, [length] bool mask) with ``ids`` at the left end."""
    tokens = np.full(length, pad_id, np.int32)
    mask = np.zeros(length, bool)
    tokens[: len(ids)] = ids
    mask[: len(ids)] = True
    return tokens, mask


def _fit(ids, limit, *, left, allowed, source, field, what):
    if not ids:
        raise BadRowError(source, field, "empty after tokenisation")
    if len(ids) <= limit:
        return ids
    if not allowed:
        raise BadRowError(source, field, f"over-long {what}", f"{len(ids)} tokens > {limit}")
    return ids[len(ids) - limit:] if left else ids[:limit]


class Encoder:
    """Callable turning a normalised row into a dict of fixed-shape arrays.

    ``Encoder(...)(row)`` returns ``prompt_tokens [P] int32, prompt_mask [P] bool`` and, for
    pairs, ``chosen_tokens/rejected_tokens [T] int32, chosen_mask/rejected_mask [T] bool`` and,
    when ``with_scores``, ``chosen_score/rejected_score`` float32 scalars. Raises
    :class:`BadRowError` naming the row's ``source`` (file:line) and field.
    """

    def __init__(self, tokenizer, *, max_prompt_len: int, max_response_len: int | None = None,
                 pairs: bool = True, with_scores: bool = False, truncate_prompt: bool = True,
                 truncate_response: bool = True, use_chat_template: bool | None = None,
                 append_eos: bool = True, system_prompt: str = ""):
        if max_prompt_len <= 0 or (pairs and (max_response_len is None or max_response_len <= 0)):
            raise ValueError("max_prompt_len and max_response_len must be positive, got "
                             f"{max_prompt_len}, {max_response_len}")
        self.tokenizer, self.pad_id = tokenizer, pad_id_of(tokenizer)
        self.max_prompt_len, self.max_response_len = max_prompt_len, max_response_len
        self.pairs, self.with_scores = pairs, with_scores
        self.truncate_prompt, self.truncate_response = truncate_prompt, truncate_response
        self.use_chat_template, self.append_eos = use_chat_template, append_eos
        self.system_prompt = system_prompt

    def __call__(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        src = row.get("source", "<row>")
        ids = encode_prompt(self.tokenizer, with_system_prompt(row["prompt"], self.system_prompt),
                            use_chat_template=self.use_chat_template)
        ids = _fit(ids, self.max_prompt_len, left=True, allowed=self.truncate_prompt, source=src,
                   field="prompt", what="prompt")
        out = dict(zip(("prompt_tokens", "prompt_mask"),
                       pad_left(ids, self.max_prompt_len, self.pad_id)))
        if not self.pairs:
            return out
        responses = {}
        for name in ("chosen", "rejected"):
            r = encode_response(self.tokenizer, row[name], append_eos=self.append_eos)
            responses[name] = _fit(r, self.max_response_len, left=False,
                                   allowed=self.truncate_response, source=src, field=name,
                                   what="response")
            out[f"{name}_tokens"], out[f"{name}_mask"] = pad_right(
                responses[name], self.max_response_len, self.pad_id)
        if responses["chosen"] == responses["rejected"]:
            raise BadRowError(src, "rejected", "identical after truncation",
                              f"max_response_len={self.max_response_len}")
        if self.with_scores:
            out["chosen_score"] = np.float32(row["chosen_score"])
            out["rejected_score"] = np.float32(row["rejected_score"])
        return out
