from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

# Process-wide, before anything is compiled: dropout masks on CPU as one fused kernel (tinybert_jax/threefry.py),
# bit-identical to JAX's own lowering.
lower_threefry_unrolled_on_cpu()
