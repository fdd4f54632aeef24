"""load_pretrained against transformers itself: tiny random Llama / Mistral / Qwen2 / Qwen3 checkpoints written by
`save_pretrained` into a temporary folder (no network), loaded here, logits compared with the PyTorch model."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax.models import hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97
# Each family with the config features it adds: llama3 RoPE scaling (its smoothing band covers some of these
# frequencies at original_max_position_embeddings=16), a sliding window shorter than the sequence, Qwen2's biases
# with a tied head, Qwen3's q/k norms with a head_dim that is not hidden/heads.
FAMILIES = {
    "llama": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    },
    "mistral": {"sliding_window": 5},
    "qwen2": {"tie_word_embeddings": True},
    "qwen3": {"head_dim": 24},
}


def tiny_model(family: str, **overrides):
    """A random-initialised transformers model of `family` (eager attention), its weights moved off their init."""
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **FAMILIES[family],
        **overrides,
    }
    cfg = transformers.AutoConfig.for_model(family, **fields)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # norm weights of 1 and zero biases would hide a misplaced norm or bias
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def torch_logits(model, tokens, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def padded_batch() -> tuple[np.ndarray, np.ndarray]:
    """Two sequences of 11 tokens, the second right-padded after 7."""
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 11))
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0
    return tokens, mask


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """(family, folder, the PyTorch model) of a float32 checkpoint."""
    model = tiny_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, folder, model


def test_logits_match_transformers_in_float32(checkpoint):
    """float32 on both sides: the two differ only in summation order (and XLA's exp / rsqrt), a few ulp per layer;
    2e-5 is ~170 ulp of the largest logit (~1.5) and far below what a misplaced mask, RoPE rule, norm or bias
    moves (1e-2 and more). Padded positions are left out: their logits are no one's contract."""
    family, folder, model = checkpoint
    tokens, mask = padded_batch()
    lm = hf.load_pretrained(folder)
    assert lm.config.family == family and lm.config.dtype == "float32"
    ours = np.asarray(lm.logits(tokens, mask))
    assert ours.shape == (2, 11, VOCAB) and ours.dtype == np.float32
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], torch_logits(model, tokens, mask)[real], rtol=0, atol=2e-5)


def test_padding_changes_nothing_for_the_real_tokens(checkpoint):
    """The padded row's real tokens get the logits of the same tokens alone (keys past them are masked)."""
    _, folder, _ = checkpoint
    tokens, mask = padded_batch()
    lm = hf.load_pretrained(folder)
    alone = np.asarray(lm.logits(tokens[1:, :7]))
    np.testing.assert_allclose(np.asarray(lm.logits(tokens, mask))[1, :7], alone[0], rtol=0, atol=1e-5)


def test_query_chunks_give_the_same_logits(checkpoint):
    """Attention in blocks of 4 queries (each against the keys up to its last query) computes every score row as
    the whole-matrix attention does: logits agree to float32 rounding, padding and sliding windows included."""
    _, folder, _ = checkpoint
    tokens, mask = padded_batch()
    lm = hf.load_pretrained(folder)
    chunked = hf.Decoder(lm.config, query_chunk=4).apply({"params": lm.params}, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(chunked)[real], np.asarray(lm.logits(tokens, mask))[real], rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "scaling",
    [
        None,
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
    ids=["default", "linear", "llama3"],
)
def test_rope_frequencies_are_transformers_own(scaling):
    """inv_frequencies equals transformers' own frequencies bit for bit (float32 on both sides), head_dim 128 and
    theta 5e5 as in Llama 3, so that llama3's smoothing band holds some frequencies. (A float32 numpy power differs
    from PyTorch's correctly rounded one in 13 of these 64 values.)"""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fields = {"hidden_size": 512, "num_attention_heads": 4, "rope_theta": 5e5, "rope_scaling": scaling}
    cfg = transformers.AutoConfig.for_model("llama", **fields)
    ours = hf.inv_frequencies(hf.config_from_hf(cfg.to_dict()))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        theirs = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)[0]
    else:
        theirs = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")[0]
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_sliding_windows_from_each_config_form():
    """transformers 5's layer_types, Mistral's sliding_window, Qwen's use_sliding_window with max_window_layers."""
    base = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2}
    base |= {"intermediate_size": 8, "rope_theta": 1e4}
    cfg = lambda **kw: hf.config_from_hf(base | kw)
    types = ["full_attention", "sliding_attention", "sliding_attention"]
    assert cfg(model_type="qwen2", layer_types=types, sliding_window=4).sliding_windows == (None, 4, 4)
    assert cfg(model_type="mistral", sliding_window=6).sliding_windows == (6, 6, 6)
    assert cfg(model_type="mistral", sliding_window=None).sliding_windows == ()
    qwen = {"model_type": "qwen3", "sliding_window": 5, "max_window_layers": 1}
    assert cfg(**qwen, use_sliding_window=True).sliding_windows == (None, 5, 5)
    assert cfg(**qwen, use_sliding_window=False).sliding_windows == ()
    assert cfg(model_type="llama").sliding_windows == ()


def test_config_features_reach_the_model():
    """Each family's distinguishing config ends up in DecoderConfig (else the parity tests would not test it)."""
    cfgs = {f: hf.config_from_hf(tiny_model(f).config.to_dict()) for f in FAMILIES}
    assert cfgs["llama"].rope_type == "llama3" and cfgs["llama"].rope_factor == 8.0
    assert cfgs["mistral"].sliding_windows == (5, 5)
    assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].o_bias and cfgs["qwen2"].tie_word_embeddings
    assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 24
    assert not any(c.qk_norm for f, c in cfgs.items() if f != "qwen3")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_weights_stay_bfloat16(family, tmp_path):
    """bf16 weights load as bf16 and compute in bf16. Both sides round differently (transformers rounds attention
    scores to bf16, this model keeps them in float32), so the check is against the float32 model of the same
    weights: our bf16 error is at most twice PyTorch's bf16 error (measured: 0.8-1.2 times). Loaded with
    dtype='float32', the same folder matches that float32 model to float32 precision."""
    tiny_model(family).to(torch.bfloat16).save_pretrained(tmp_path)
    tokens, mask = padded_batch()
    auto = transformers.AutoModelForCausalLM
    ref = torch_logits(auto.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager"), tokens, mask)
    torch_bf16 = torch_logits(
        auto.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager"), tokens, mask
    )
    lm = hf.load_pretrained(tmp_path)
    assert lm.config.dtype == "bfloat16" and {str(p.dtype) for p in jax.tree.leaves(lm.params)} == {"bfloat16"}
    real = mask.astype(bool)
    ours_err = np.abs(np.asarray(lm.logits(tokens, mask)) - ref)[real].max()
    torch_err = np.abs(torch_bf16 - ref)[real].max()
    assert 0 < ours_err <= 2 * torch_err, (ours_err, torch_err)
    as_f32 = hf.load_pretrained(tmp_path, dtype="float32")
    np.testing.assert_allclose(np.asarray(as_f32.logits(tokens, mask))[real], ref[real], rtol=0, atol=2e-5)


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    model = tiny_model("qwen3")
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "shards", max_shard_size="40KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").exists()
    one, shards = hf.load_pretrained(tmp_path / "one"), hf.load_pretrained(tmp_path / "shards")
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(shards.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_interceptor_and_capture_act_on_the_loaded_model(tmp_path):
    """Every linear layer but the head is quantized by a rule list, and the cached unquantized logits are not reused
    inside the context; capture records each projection's operands."""
    tiny_model("llama").save_pretrained(tmp_path)
    lm = hf.load_pretrained(tmp_path)
    tokens, _ = padded_batch()
    plain = np.asarray(lm.logits(tokens))
    with lb.quantized([("lm_head", None), (".*", "direct_cast:mxfp4")]) as report:
        quant = np.asarray(lm.logits(tokens))
    assert np.abs(quant - plain).max() > 1e-3
    projections = {f"layers_{i}/{m}" for i in range(2) for m in hf.PROJECTIONS}
    assert set(report.quantized) == projections, report.quantized
    np.testing.assert_array_equal(np.asarray(lm.logits(tokens)), plain)
    with lb.capture(".*_proj") as cap:
        lm.logits(tokens)
    assert {r.path for r in cap.records} == projections


def test_tokenizer_json_is_loaded(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tiny_model("qwen2").save_pretrained(tmp_path)
    words = ["<unk>", "the", "quick", "brown", "fox"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    lm = hf.load_pretrained(tmp_path)
    np.testing.assert_array_equal(lm.encode("the quick red fox"), [1, 2, 0, 4])
    assert lm.logits(lm.encode("the quick fox")[None]).shape == (1, 3, VOCAB)


# --- errors ------------------------------------------------------------------------------------------------------


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type 'yarn'"),
        ({"num_hidden_layers": 3}, "lacks"),
        ({"hidden_size": 32}, "has shape"),
        ({"layer_types": ["sliding_attention"] * 2, "sliding_window": None}, "sliding_window is null"),
    ],
    ids=["model_type", "hidden_act", "rope", "missing-tensors", "shapes", "layer_types"],
)
def test_unsupported_or_inconsistent_configs_name_the_field(tmp_path, changes, message):
    tiny_model("llama", rope_scaling=None).save_pretrained(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        hf.load_pretrained(tmp_path)


def test_missing_files_and_stray_tensors_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_pretrained(tmp_path)
    tiny_model("qwen2").save_pretrained(tmp_path / "m")
    shutil.copy(tmp_path / "m" / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        hf.load_pretrained(tmp_path)
    _edit_config(tmp_path / "m", tie_word_embeddings=False)  # the file has no lm_head.weight: a tied checkpoint
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        hf.load_pretrained(tmp_path / "m")
