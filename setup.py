"""modeseek: on-policy sampling and negative gradients for preference fine-tuning, in JAX."""

from setuptools import find_packages, setup

# Pinned tightly: JAX 0.10's mesh defaults (Explicit axes), flax 0.12's NNX/linen APIs and
# orbax's checkpoint manager API all change between minor releases.
CORE = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "chex>=0.1.92,<0.2",
    "orbax-checkpoint>=0.12.8,<0.13",
    "numpy>=2.0,<3",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
]
LLM = [
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.8,<0.9",
    "gguf>=0.19,<0.20",
    "tensorflow-datasets>=4.9.10,<4.10",
    "array-record>=0.8.6,<0.9",
    "grain>=0.2.18,<0.3",
    "pyarrow>=20",
    "tensorboardX>=2.6,<3",
    "jinja2>=3.1",  # chat templates
]
PARITY = [
    "torch==2.13.0",
    "transformers>=5.23,<5.25",
]
TEST = [
    "pytest>=9,<10",
    "hypothesis>=6.100,<7",
    "nbclient>=0.11,<0.12",
    "nbformat>=5.10,<6",
    "ipykernel>=6.29",
    "ruff>=0.17,<0.18",
] + LLM + PARITY

setup(
    name="modeseek",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["modeseek*", "bandits*", "synthetic*", "llm*", "configs*"]),
    package_data={"llm": ["data/*.jsonl", "data/*.json"]},
    install_requires=CORE,
    extras_require={"llm": LLM, "parity": PARITY, "test": TEST},
)
