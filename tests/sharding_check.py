"""Sharded == single-device for qdot_general and the linen interceptor (run by tests/test_sharding.py).

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts, hence a separate process.
Mesh (data=4, model=2): activations data parallel; W1 column parallel (out sharded), W2 row parallel (in
sharded, 64 local rows = two 32-blocks); NV formats exercise the global tensor amax across shards. Both GSPMD
(AxisType.Auto) and sharding-in-types (AxisType.Explicit) meshes; on the latter the gradients must carry their
operands' shardings.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lowbit_jax as lb

DN = (((1,), (0,)), ((), ()))
CFG1 = lb.QDotConfig.train("mxint8", stochastic_grads=True)
CFG2 = lb.QDotConfig.train("nvfp4")


def loss(x, w1, w2, c, key, out_sharding=None):
    h = jax.nn.relu(lb.qdot_general(x, w1, DN, CFG1, key=jax.random.fold_in(key, 1)))
    y = lb.qdot_general(h, w2, DN, CFG2, key=jax.random.fold_in(key, 2), out_sharding=out_sharding)
    return jnp.sum(y * c)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(64, name="fc2")(nn.relu(nn.Dense(128, name="fc1")(x)))


def check(name, got, want, rtol=1e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        scale = np.abs(w).max() + 1e-30
        err = np.abs(g - w).max() / scale
        assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol}"
    print(f"{name}: ok")


def main():
    assert jax.device_count() == 8, jax.devices()
    auto = (jax.sharding.AxisType.Auto,) * 2  # GSPMD propagation
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=auto)
    rng = np.random.default_rng(0)
    x, w1, w2, c = (
        jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(16, 64), (64, 128), (128, 64), (16, 64)]
    )
    key = jax.random.key(0)
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    one = jax.devices()[0]
    want = f(*jax.device_put((x, w1, w2, c), one), key)
    shard = lambda a, *spec: jax.device_put(a, NamedSharding(mesh, P(*spec)))
    xs, w1s, w2s, cs = shard(x, "data", None), shard(w1, None, "model"), shard(w2, "model", None), shard(c, "data")
    got = f(xs, w1s, w2s, cs, key)
    assert len(got[1][1].sharding.device_set) > 1
    check("qdot_general data+tensor parallel", got, want)

    m = MLP()
    params = jax.jit(m.init)(key, x)

    def mlp(p, x):
        with lb.quantized([(".*", lb.QDotConfig.direct_cast("mxfp4", rotation=32))]):
            return m.apply(p, x)

    g = jax.jit(mlp)
    want = g(jax.device_put(params, one), jax.device_put(x, one))
    specs = {"fc1": {"kernel": P(None, "model"), "bias": P("model")}, "fc2": {"kernel": P("model", None), "bias": P()}}
    ps = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), params, {"params": specs})
    check("linen interceptor under a mesh", g(ps, xs), want)
    check_explicit(x, w1, w2, c, key)
    print("OK")


def check_explicit(x, w1, w2, c, key):
    """Sharding in types: W2 row parallel needs out_sharding (as for jnp.dot); dX, dW keep X's and W's specs."""
    explicit = (jax.sharding.AxisType.Explicit,) * 2
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=explicit)
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w1, w2, c, key)
    specs = (P("data", None), P(None, "model"), P("model", None), P("data", None))
    with jax.set_mesh(mesh):
        args = [jax.device_put(a, s) for a, s in zip((x, w1, w2, c), specs, strict=True)]
        f = jax.jit(jax.value_and_grad(lambda *a: loss(*a, out_sharding=P("data", None)), argnums=(0, 1, 2)))
        got = f(*args, key)
        assert [jax.typeof(g).sharding.spec for g in got[1]] == list(specs[:3]), got[1]
    check("qdot_general on an Explicit mesh", got, want)


if __name__ == "__main__":
    main()
