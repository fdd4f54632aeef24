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
    check_small_local_shards(key)
    check_shard_map(x, w1, key)
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


def check_small_local_shards(key):
    """Explicit mesh, 8 shards of 8 along the quantized axis (< a 32-block): the block is gathered, values equal one
    device's bit for bit, and fake_quant keeps its input's sharding."""
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal((64, 16)).astype(np.float32)
    cfg = lb.QDotConfig.train("mxfp4")

    def f(x, w, out_sharding=None):
        return jnp.sum(lb.qdot_general(x, w, DN, cfg, out_sharding=out_sharding) ** 2)

    want = (lb.fake_quant(x, "nvfp4"), lb.quantize(x, "mxfp4").codes, jax.value_and_grad(f, (0, 1))(x, w))
    with jax.set_mesh(mesh):
        xs, ws = jax.device_put(x, P(None, "model")), jax.device_put(w, P("model", None))
        y = lb.fake_quant(xs, "nvfp4")
        assert jax.typeof(y).sharding.spec == P(None, "model"), jax.typeof(y).sharding
        grads = jax.jit(jax.value_and_grad(lambda x, w: f(x, w, P()), (0, 1)))(xs, ws)
        got = (y, lb.quantize(xs, "mxfp4").codes, grads)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w_))
    print("local shards shorter than a block: ok")


def check_shard_map(x, w1, key):
    """Data-parallel jax.shard_map: grad through qdot_general equals the sum of per-shard gradients (each device
    quantizes its own tokens) and, for an empty config, lax.dot_general's gradient bit for bit; impl='pallas' in
    interpret mode raises a clear error unless check_vma=False, where it equals impl='xla' (which then, like
    lax.dot_general, leaves the gradient of the replicated W unsummed)."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    def data_parallel(dot, check_vma=True):
        def step(w, x):
            loss_val, g = jax.value_and_grad(lambda w, x: jnp.sum(dot(x, w) ** 2))(w, x)
            return jax.lax.psum(loss_val, "data"), g

        sm = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=check_vma)
        return jax.jit(sm)(w1, xs)

    plain = data_parallel(lambda x, w: jax.lax.dot_general(x, w, DN, precision="highest"))
    for g, w_ in zip(data_parallel(lambda x, w: lb.qdot_general(x, w, DN, lb.QDotConfig())), plain, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w_))
    cfg = lb.QDotConfig.train("mxfp4")
    got = data_parallel(lambda x, w: lb.qdot_general(x, w, DN, cfg))
    per_shard = [
        jax.value_and_grad(lambda w, xi: jnp.sum(lb.qdot_general(xi, w, DN, cfg) ** 2))(w1, xi)
        for xi in np.asarray(x).reshape(8, -1, x.shape[1])
    ]
    check("shard_map grad through qdot_general", got, jax.tree.map(lambda *a: sum(a), *per_shard), rtol=1e-6)
    pallas = lb.QDotConfig.train("mxfp4", impl="pallas")
    try:
        data_parallel(lambda x, w: lb.qdot_general(x, w, DN, pallas))
        raise AssertionError("impl='pallas' under check_vma=True should raise")
    except NotImplementedError as err:
        assert "check_vma=False" in str(err), err
    got_pallas = data_parallel(lambda x, w: lb.qdot_general(x, w, DN, pallas), check_vma=False)
    got_xla = data_parallel(lambda x, w: lb.qdot_general(x, w, DN, cfg), check_vma=False)  # no implicit psum here
    check("shard_map (check_vma=False) pallas == xla", got_pallas, got_xla, rtol=0)


if __name__ == "__main__":
    main()
