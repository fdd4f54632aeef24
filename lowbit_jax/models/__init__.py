"""Small Flax models used by the experiments; import each submodule by name (`from lowbit_jax.models import minilm`)."""
