r"""Rule rewards on decoded text: GSM8K-style exact match, regex and format checks.

    extract_answer(text, marker="#### ") -> str | None
        the number after the FIRST `marker`, as OpenAI's GSM8K grader reads it
        (grade_school_math/dataset.py: `re.search(r"#### (\-?[0-9\.\,]+)")`, commas removed),
        here also allowing spaces and one "$" after the marker and dropping a trailing ".";
        None when there is no marker followed by a number.
    answers_match(predicted, reference) -> bool
        equal strings, or equal numbers when both parse as floats ("42" == "42.0").
    load_references(path) -> {prompt: answer}      JSONL rows {"prompt": ..., "answer": ...}
    make_text_rule(rule, name, *, pattern, path, references, marker)
        -> score(prompt, completion, answer=None) -> float in {0.0, 1.0}

exact_match: 1 when the completion's extracted answer matches the reference. The reference of a
prompt is, in order: the `answer` passed with the batch (a dataset column), else the entry for
this prompt in `references` ([prompt, answer] pairs or {"prompt", "answer"} dicts) or in the
JSONL file `path`. Decoded prompts may carry a chat template around the data's prompt text, so
a prompt with no exact entry takes the longest reference prompt it contains. A reference that
itself contains the marker (a full GSM8K solution) is reduced to its final answer.
regex: 1 when `re.search(pattern, completion)` finds a match.
format: 1 when `re.fullmatch(pattern, completion)` (write `(?s)` to let "." cross newlines).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

from llm.reward_types import RewardError

GSM8K_MARKER = "#### "


def _normalise(text: str) -> str | None:
    text = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    return text or None


def extract_answer(text: str, marker: str = GSM8K_MARKER) -> str | None:
    found = re.search(re.escape(marker.strip()) + r"\s*\$?\s*(-?[0-9.,]+)", text)
    return None if found is None else _normalise(found.group(1))


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    if predicted == reference:
        return True
    try:
        return float(predicted) == float(reference)
    except ValueError:
        return False


def load_references(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        raise RewardError(f"{path}: reference file missing")
    refs = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RewardError(f"{path}:{line_no}: not valid JSON ({e})") from None
            for key in ("prompt", "answer"):
                if not isinstance(row, dict) or not isinstance(row.get(key), str | int | float):
                    raise RewardError(f"{path}:{line_no}: field {key!r} missing or not text")
            refs[str(row["prompt"])] = str(row["answer"])
    return refs


def _reference_table(name, path, references) -> dict[str, str]:
    table = load_references(path) if path else {}
    for i, item in enumerate(references or ()):
        if isinstance(item, dict) and "prompt" in item and "answer" in item:
            table[str(item["prompt"])] = str(item["answer"])
        elif isinstance(item, list | tuple) and len(item) == 2:
            table[str(item[0])] = str(item[1])
        else:
            raise RewardError(f"reward {name!r}: references[{i}] = {item!r} is neither a "
                              "[prompt, answer] pair nor a {'prompt', 'answer'} dict")
    return table


def make_text_rule(rule: str, name: str, *, pattern: str = "", path: str = "",
                   references=(), marker: str = GSM8K_MARKER) -> Callable:
    """score(prompt, completion, answer=None) -> 1.0 | 0.0 for rule exact_match|regex|format."""
    if rule in ("regex", "format"):
        if not pattern:
            raise RewardError(f"reward {name!r}: rule {rule} needs `pattern`")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise RewardError(f"reward {name!r}: pattern {pattern!r} is not a valid regular "
                              f"expression ({e})") from None
        match = compiled.search if rule == "regex" else compiled.fullmatch
        return lambda prompt, completion, answer=None: float(match(completion) is not None)
    if rule != "exact_match":
        raise RewardError(f"reward {name!r}: {rule!r} is not a text rule")
    if not marker.strip():
        raise RewardError(f"reward {name!r}: exact_match needs a non-blank `marker`")
    table = _reference_table(name, path, references)
    by_length = sorted(table, key=len, reverse=True)
    found: dict[str, str] = {}

    def reference_of(prompt: str) -> str:
        if prompt in table:
            return table[prompt]
        if prompt not in found:
            hits = [p for p in by_length if p and p in prompt]
            if not hits:
                raise RewardError(f"reward {name!r}: no reference answer for prompt "
                                  f"{prompt[:80]!r} ({len(table)} references from "
                                  f"{path or 'references'}; or pass an `answer` column)")
            found[prompt] = table[hits[0]]
        return found[prompt]

    def score(prompt: str, completion: str, answer=None) -> float:
        reference = str(answer) if answer is not None else reference_of(prompt)
        expected = extract_answer(reference, marker) if marker.strip() in reference \
            else _normalise(reference)
        return float(answers_match(extract_answer(completion, marker), expected))

    return score
