"""A byte-level tokenizer for tiny models in tests and smoke runs (no files, no training).

Ids 0–255 are the UTF-8 bytes; then `pad_id` = 256, `eos_id` = 257, `bos_id` = 258.
`VOCAB_SIZE` (264) rounds the 259 ids up to a multiple of 8 so the vocabulary shards evenly
over tensor axes of 2, 4 or 8. It has the interface `llm.data` expects (encode, decode, eos_id,
pad_id, bos_id) and no chat template.
"""

from __future__ import annotations

VOCAB_SIZE = 264


class ByteTokenizer:
    pad_id = 256
    eos_id = 257
    bos_id = 258

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_special_tokens else ids

    def encode_text(self, text: str) -> list[int]:
        """UTF-8 bytes only: no text maps to pad/eos/bos."""
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        data = bytes(int(i) for i in ids if int(i) < 256)
        return data.decode("utf-8", errors="replace")
