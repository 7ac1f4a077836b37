"""Tokenizers through Hugging Face `tokenizers`, with chat templates (sandboxed Jinja).

API:
  load_tokenizer(path) -> Tokenizer          an HF folder (tokenizer.json, tokenizer_config.json,
                                             chat_template.jinja) or a .gguf file
  tokenizer_from_gguf_fields(fields) -> Tokenizer   rebuild from GGUF `tokenizer.*` metadata
  Tokenizer.encode(text, add_special_tokens=True) -> list[int]   parses special-token strings
  Tokenizer.encode_text(text) -> list[int]   user/data text: special-token strings stay text
  Tokenizer.decode(ids, skip_special_tokens=True) -> str
  Tokenizer.apply_chat_template(messages, add_generation_prompt=True) -> str
  Tokenizer.encode_chat(messages, add_generation_prompt=True) -> list[int]
      control tokens only from the template, never from message content (no prompt injection)
  Tokenizer.save(directory)                  tokenizer.json + tokenizer_config.json
  attributes: eos_id, eos_ids (tuple: every id that ends a turn), pad_id, bos_id, vocab_size,
              chat_template, hf (the tokenizers.Tokenizer)
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# GGUF pre-tokenizer names -> the split regex of the original tokenizer.json
_GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_pre(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=False)
    if pre in ("default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":  # SmolLM: every digit alone, then GPT-2 byte-level splitting
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    regex = {"llama-bpe": _LLAMA3_REGEX, "qwen2": _QWEN2_REGEX}.get(pre)
    if regex is None:
        raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported "
                         "(known: default, gpt2, smollm, llama-bpe, qwen2)")
    split = pre_tokenizers.Split(tokenizers.Regex(regex), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


class Tokenizer:
    def __init__(self, hf: tokenizers.Tokenizer, *, bos_token: str | None,
                 eos_token: str | None, pad_token: str | None = None,
                 chat_template: str | None = None, extra_eos_tokens: tuple[str, ...] = ()):
        self.hf = hf
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        self.pad_id = self._id(self.pad_token) if self.pad_token else 0
        ids = [self.eos_id] + [self._id(t) for t in extra_eos_tokens]
        self.eos_ids = tuple(dict.fromkeys(i for i in ids if i is not None))
        self._template = None
        self._plain = None  # a copy of `hf` that never parses special-token strings
        self._lock = threading.Lock()
        self.special_strings = tuple(t.content for t in hf.get_added_tokens_decoder().values()
                                     if t.special)

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.hf.token_to_id(token)
        if i is None:
            raise ValueError(f"special token {token!r} is not in the vocabulary")
        return i

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_text(self, text: str) -> list[int]:
        """User or data text: a special-token string in it (e.g. "<|im_end|>") stays plain text,
        tokenised like any other characters; no BOS/EOS is added. Only the chat template (or
        the caller, e.g. an appended eos_id) produces control tokens."""
        with self._lock:  # grain maps in threads; the copy is made once
            if self._plain is None:
                self._plain = tokenizers.Tokenizer.from_str(self.hf.to_str())
                self._plain.encode_special_tokens = True
        return self._plain.encode(text, add_special_tokens=False).ids

    def contains_special(self, text: str) -> bool:
        return any(s in text for s in self.special_strings)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (not an instruct model?)")
        if self._template is None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError as e:
                raise ImportError("chat templates need jinja2: pip install jinja2") from e

            def raise_exception(message):
                raise ValueError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered chat template. Control tokens come from the template only: a
        message whose content holds special-token text is rendered with a placeholder, the
        template text around it is encoded with specials and the content with `encode_text`."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        contents = [m.get("content") for m in messages]
        if not any(isinstance(c, str) and self.contains_special(c) for c in contents):
            # the template already writes BOS and other specials as text
            return self.encode(text, False)
        marks = [f"\ue000{i}\ue001" if isinstance(c, str) else c for i, c in enumerate(contents)]
        marked = self.apply_chat_template([{**m, "content": k} for m, k in zip(messages, marks)],
                                          add_generation_prompt)
        pieces = re.split("(\ue000\\d+\ue001)", marked)
        if "".join(contents[int(p[1:-1])] if p.startswith("\ue000") else p
                   for p in pieces) != text:
            raise ValueError("the chat template rewrites message content, so user text holding "
                             "special-token strings cannot be kept apart from control tokens")
        ids: list[int] = []
        for p in pieces:
            if p.startswith("\ue000"):
                ids += self.encode_text(contents[int(p[1:-1])])
            elif p:
                ids += self.encode(p, False)
        return ids

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.hf.save(os.path.join(directory, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                  "eos_token": self.eos_token, "pad_token": self.pad_token,
                  "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _load_hf_dir(directory: str) -> Tokenizer:
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no tokenizer.json (only fast tokenizers are "
                                "supported)")
    hf = tokenizers.Tokenizer.from_file(path)
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            with open(p) as f:
                config.update(json.load(f))
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        template = {t["name"]: t["template"] for t in template}.get("default")
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.exists(jinja_path):
        with open(jinja_path) as f:
            template = f.read()
    extra = ()
    model_config = os.path.join(directory, "config.json")
    if os.path.exists(model_config):
        with open(model_config) as f:
            eos = json.load(f).get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else (eos or [])
        extra = tuple(hf.id_to_token(i) for i in eos if hf.id_to_token(i) is not None)
    return Tokenizer(hf, bos_token=_token_text(config.get("bos_token")),
                     eos_token=_token_text(config.get("eos_token")),
                     pad_token=_token_text(config.get("pad_token")), chat_template=template,
                     extra_eos_tokens=extra)


def tokenizer_from_gguf_fields(fields: dict[str, Any]) -> Tokenizer:
    """`fields`: GGUF metadata as plain Python values (name -> value)."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model={kind!r} is not supported (only byte-level "
                         "BPE, 'gpt2')")
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                         byte_fallback=False))
    hf.pre_tokenizer = _byte_level_pre(fields.get("tokenizer.ggml.pre", "default"))
    hf.decoder = decoders.ByteLevel()
    # GGUF token types: 3 = control, 4 = user-defined; both are atomic added tokens
    special = [tokenizers.AddedToken(tokens[i], special=types[i] == 3, normalized=False)
               for i in range(len(tokens)) if types[i] in (3, 4)]
    hf.add_special_tokens([t for t in special if t.special])
    hf.add_tokens([t for t in special if not t.special])
    name = lambda key: (tokens[fields[key]] if key in fields else None)
    eos = name("tokenizer.ggml.eos_token_id")
    extra = tuple(tokens[fields[k]] for k in ("tokenizer.ggml.eot_token_id",) if k in fields)
    return Tokenizer(hf, bos_token=name("tokenizer.ggml.bos_token_id"), eos_token=eos,
                     pad_token=name("tokenizer.ggml.padding_token_id"),
                     chat_template=fields.get("tokenizer.chat_template"),
                     extra_eos_tokens=extra)


def load_tokenizer(path: str) -> Tokenizer:
    if path.endswith(".gguf"):
        from llm.gguf_import import read_gguf_fields

        return tokenizer_from_gguf_fields(read_gguf_fields(path))
    return _load_hf_dir(path)
