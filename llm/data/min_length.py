"""The embedded Min Length preference data set (PAPER.md §5), generated procedurally.

Min Length: of two responses to an instruction, the **shorter** one is preferred. Prompts are
instruction templates ("Describe a cat.", "Explain how a bridge works.") over a list of subjects;
responses are 1–8 sentences drawn from plain-English templates about the subject; the chosen
response has fewer sentences, fewer words and fewer characters than the rejected one. The held-out
``test`` split uses subjects that never occur in ``train``.

Each row: ``prompt``, ``chosen`` (the shorter response), ``rejected``, and the gold reward as
``chosen_score = -(words in chosen)``, ``rejected_score = -(words in rejected)``, words being
whitespace-separated. Length in tokens, the paper's r = −len, is the sum of the response mask.

Regenerate (deterministic; the test suite checks the committed files are this output)::

    python -m llm.data.min_length
"""

from __future__ import annotations

import json
import random

from llm.data import default_dataset_path

SEED = 2024
NUM_TRAIN, NUM_TEST = 360, 60

# (subject, adjective, place, use) — enough slots to fill every sentence template.
SUBJECTS = [
    ("a cat", "curious", "in most homes", "keeping mice away"),
    ("a dog", "loyal", "in parks and homes", "guarding a house"),
    ("the ocean", "vast", "across most of the planet", "moving heat around the world"),
    ("a bicycle", "simple", "on city streets", "getting to work"),
    ("a library", "quiet", "in almost every town", "borrowing books"),
    ("a volcano", "powerful", "along the edges of plates", "building new land"),
    ("a forest", "green", "on every continent but one", "cleaning the air"),
    ("a river", "winding", "between hills and plains", "carrying water to the sea"),
    ("a bridge", "strong", "over rivers and roads", "crossing a gap"),
    ("a garden", "colourful", "behind many houses", "growing food"),
    ("a clock", "precise", "on walls and desks", "telling the time"),
    ("a mountain", "tall", "in long ranges", "catching snow and rain"),
    ("a piano", "elegant", "in concert halls", "playing music"),
    ("the moon", "bright", "in the night sky", "lighting the dark"),
    ("a train", "fast", "on steel tracks", "moving people between cities"),
    ("a honeybee", "busy", "near flowers", "pollinating crops"),
    ("a lighthouse", "lonely", "on rocky coasts", "warning ships"),
    ("a desert", "dry", "where little rain falls", "teaching us about heat"),
    ("a kitchen", "warm", "at the heart of a home", "cooking meals"),
    ("a museum", "fascinating", "in large cities", "keeping history alive"),
    ("a tree", "patient", "almost everywhere", "giving shade"),
    ("a computer", "useful", "in offices and schools", "solving problems"),
    ("a market", "lively", "in town squares", "buying fresh food"),
    ("a glacier", "slow", "in cold regions", "storing fresh water"),
    ("a violin", "delicate", "in orchestras", "playing melodies"),
    ("a school", "busy", "in every neighbourhood", "teaching children"),
    ("a storm", "loud", "over land and sea", "bringing rain"),
    ("a map", "handy", "in travel bags", "finding the way"),
    ("a candle", "soft", "on dinner tables", "giving gentle light"),
    ("a telescope", "clever", "in observatories", "watching distant stars"),
    ("an owl", "wise", "in old trees", "hunting at night"),
    ("a kite", "playful", "on windy beaches", "having fun outside"),
    ("a farm", "productive", "in the countryside", "raising animals"),
    ("a castle", "ancient", "on hilltops", "defending a kingdom"),
    ("a rainbow", "beautiful", "after the rain", "delighting people"),
    ("a newspaper", "informative", "at newsstands", "sharing the news"),
    ("a whale", "enormous", "in deep water", "singing to its pod"),
    ("a windmill", "steady", "on open fields", "grinding grain"),
    ("a teapot", "charming", "in many kitchens", "brewing tea"),
    ("a snowflake", "fragile", "in winter air", "decorating the ground"),
]
NUM_TEST_SUBJECTS = 8  # the last ones: held out from train

INSTRUCTIONS = [
    "Describe {s}.",
    "Tell me about {s}.",
    "Explain what makes {s} special.",
    "Write a short note about {s}.",
    "What do you know about {s}?",
    "Give an overview of {s}.",
]

SENTENCES = [
    "{S} is {a}.",
    "Many people think that {s} is {a}.",
    "You can usually find {s} {p}.",
    "{S} is often used for {u}.",
    "People have valued {s} for a long time.",
    "There are many stories about {s}.",
    "Children often enjoy learning about {s}.",
    "In short, {s} is worth knowing about.",
    "Some say that {s} is the most {a} thing they have seen.",
    "It is easy to see why {s} is so {a}.",
    "Most of the time, {s} is found {p}.",
    "One good reason to care about {s} is {u}.",
]


def _response(rng: random.Random, subject: tuple[str, str, str, str], n: int) -> str:
    s, a, p, u = subject
    fill = {"s": s, "S": s[0].upper() + s[1:], "a": a, "p": p, "u": u}
    return " ".join(t.format(**fill) for t in rng.sample(SENTENCES, n))


def generate(split: str, num_rows: int, seed: int = SEED) -> list[dict]:
    """The rows of ``split`` ("train" or "test"), deterministic in ``seed``."""
    rng = random.Random(f"{seed}-{split}")
    subjects = SUBJECTS[:-NUM_TEST_SUBJECTS] if split == "train" else SUBJECTS[-NUM_TEST_SUBJECTS:]
    rows = []
    for _ in range(num_rows):
        subject = rng.choice(subjects)
        prompt = rng.choice(INSTRUCTIONS).format(s=subject[0])
        chosen = rejected = ""
        # Shorter in sentences, words and characters, so shorter in tokens for any tokenizer
        # that splits on whitespace and punctuation.
        while not (len(chosen.split()) < len(rejected.split()) and len(chosen) < len(rejected)):
            n_short, n_long = sorted(rng.sample(range(1, 9), 2))
            chosen, rejected = _response(rng, subject, n_short), _response(rng, subject, n_long)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "chosen_score": -len(chosen.split()),
                     "rejected_score": -len(rejected.split())})
    return rows


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_files() -> None:
    for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        with open(default_dataset_path(split), "w", encoding="utf-8") as f:
            f.write(dumps(generate(split, n)))


if __name__ == "__main__":
    write_files()
