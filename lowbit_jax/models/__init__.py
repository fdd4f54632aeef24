"""Flax models: the small ones the experiments run (import each submodule by name, `from lowbit_jax.models import
minilm`) and `load_pretrained`, which reads a local Hugging Face Llama / Mistral / Qwen2 / Qwen3 folder (`hf`).

Their float32 products ask for HIGHEST precision: a GPU's default for float32 matmuls is TF32 (no change on a CPU).
"""

import jax

HIGHEST = jax.lax.Precision.HIGHEST

from lowbit_jax.models.hf import PretrainedLM, load_pretrained  # noqa: E402

__all__ = ["HIGHEST", "PretrainedLM", "load_pretrained"]
