"""Small Flax models used by the experiments; import each submodule by name (`from lowbit_jax.models import minilm`).

Their float32 products ask for HIGHEST precision: a GPU's default for float32 matmuls is TF32 (no change on a CPU).
"""

import jax

HIGHEST = jax.lax.Precision.HIGHEST
