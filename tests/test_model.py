"""The LLaMA forward pass against a naive float64 reference, and every checkpoint layout against each other."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import model as llama
from conftest import ROOT, TINY, hf_permute, random_state, write_gguf, write_hf, write_meta


def reference_forward(state: dict, args: llama.ModelArgs, tokens: list[int]) -> np.ndarray:
    """LLaMA written out with explicit loops in float64 numpy: one sequence, no batching, no complex numbers."""
    W = {k: v.double().numpy() for k, v in state.items()}
    hd, T = args.dim // args.n_heads, len(tokens)
    group = args.n_heads // args.n_kv_heads

    def rmsnorm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + args.norm_eps) * w

    def rope(x):  # x: (T, heads, hd); rotate each pair (x[2k], x[2k+1]) by t * theta^(-2k/hd)
        out = x.copy()
        for t in range(T):
            for k in range(hd // 2):
                a = t * args.rope_theta ** (-2 * k / hd)
                c, s = np.cos(a), np.sin(a)
                x0, x1 = x[t, :, 2 * k], x[t, :, 2 * k + 1]
                out[t, :, 2 * k], out[t, :, 2 * k + 1] = x0 * c - x1 * s, x0 * s + x1 * c
        return out

    h = W["tok_embeddings.weight"][tokens]
    for i in range(args.n_layers):
        p = f"layers.{i}."
        x = rmsnorm(h, W[p + "attention_norm.weight"])
        q = rope((x @ W[p + "attention.wq.weight"].T).reshape(T, args.n_heads, hd))
        k = rope((x @ W[p + "attention.wk.weight"].T).reshape(T, args.n_kv_heads, hd))
        v = (x @ W[p + "attention.wv.weight"].T).reshape(T, args.n_kv_heads, hd)
        y = np.zeros((T, args.n_heads, hd))
        for head in range(args.n_heads):
            kv = head // group  # the kv head this query head shares
            for t in range(T):
                scores = np.array([q[t, head] @ k[u, kv] for u in range(t + 1)]) / np.sqrt(hd)
                p_att = np.exp(scores - scores.max())
                p_att /= p_att.sum()
                y[t, head] = p_att @ v[: t + 1, kv]
        h = h + y.reshape(T, -1) @ W[p + "attention.wo.weight"].T
        x = rmsnorm(h, W[p + "ffn_norm.weight"])
        gate = x @ W[p + "feed_forward.w1.weight"].T
        h = h + ((gate / (1 + np.exp(-gate))) * (x @ W[p + "feed_forward.w3.weight"].T)) @ W[
            p + "feed_forward.w2.weight"].T
    return rmsnorm(h, W["norm.weight"]) @ W["output.weight"].T


def build(state, args):
    return llama.build_model(args, {k: (lambda v=v: v) for k, v in state.items()}, "test")


TOKENS = [3, 17, 42, 5, 63, 0, 8, 8, 29, 11]


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_forward_matches_float64_reference(n_kv_heads):
    args = llama.ModelArgs(**{**TINY, "n_kv_heads": n_kv_heads})
    state = random_state(args, seed=n_kv_heads)
    logits = build(state, args)(torch.tensor([TOKENS]))
    ref = reference_forward(state, args, TOKENS)
    assert logits.shape == (1, len(TOKENS), args.vocab_size)
    err = np.abs(logits[0].double().numpy() - ref).max() / np.abs(ref).max()
    assert err < 1e-5


def test_batch_rows_are_independent(tiny_args, tiny_state):
    m = build(tiny_state, tiny_args)
    batch = torch.tensor([TOKENS, TOKENS[::-1]])
    both = m(batch)
    assert torch.allclose(both[1], m(batch[1:])[0], atol=1e-5)
    # causality: the logits at position t do not depend on tokens after t
    changed = batch.clone()
    changed[0, 6:] = 1
    assert torch.allclose(m(changed)[0, :6], both[0, :6], atol=1e-5)


def logits_of(path, tokens=TOKENS):
    return llama.load_checkpoint(path)(torch.tensor([tokens]))


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_layout(tmp_path, tiny_args, tiny_state, shards):
    write_meta(tmp_path / "m", tiny_state, tiny_args, shards=shards)
    m = llama.load_checkpoint(tmp_path / "m")
    assert m.args == dataclasses.replace(tiny_args, max_seq_len=4096)  # params.json does not say; LLaMA-2's
    expected = build(tiny_state, tiny_args)(torch.tensor([TOKENS]))
    assert torch.allclose(logits_of(tmp_path / "m"), expected, atol=1e-5)


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_layout_undoes_the_qk_permutation(tmp_path, tiny_args, tiny_state, shards):
    write_hf(tmp_path / "hf", tiny_state, tiny_args, shards=shards)
    write_meta(tmp_path / "meta", tiny_state, tiny_args, shards=2)
    hf, meta = logits_of(tmp_path / "hf"), logits_of(tmp_path / "meta")
    assert torch.allclose(hf, meta, atol=1e-5)
    # the loaded q/k rows are Meta's own, not the permuted rows the file stores
    m = llama.load_checkpoint(tmp_path / "hf")
    for name, heads in (("wq", tiny_args.n_heads), ("wk", tiny_args.n_kv_heads)):
        meta_rows = tiny_state[f"layers.0.attention.{name}.weight"]
        assert not torch.equal(hf_permute(meta_rows, heads), meta_rows)
        assert torch.equal(getattr(m.layers[0].attention, name).weight, meta_rows)


def test_hf_tied_embeddings(tmp_path, tiny_state):
    args = llama.ModelArgs(**{**TINY, "tie_embeddings": True})
    state = random_state(args)
    write_hf(tmp_path / "hf", state, args)
    m = llama.load_checkpoint(tmp_path / "hf")
    assert m.output.weight is m.tok_embeddings.weight
    ref = reference_forward(state, args, TOKENS)
    assert np.abs(m(torch.tensor([TOKENS]))[0].double().numpy() - ref).max() < 1e-5 * np.abs(ref).max()


def test_gguf_dequantizes_to_hand_computed_values(tmp_path, tiny_args):
    expected = write_gguf(tmp_path / "tiny.gguf", tiny_args)
    m = llama.load_checkpoint(tmp_path / "tiny.gguf")
    assert m.args == dataclasses.replace(tiny_args, tie_embeddings=True)
    state = m.state_dict()
    for name, values in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), values, err_msg=name)
    assert m.output.weight is m.tok_embeddings.weight


def test_dtype_and_bare_name(tmp_path, tiny_args, tiny_state, monkeypatch):
    write_meta(tmp_path / "models" / "tiny-llama", tiny_state, tiny_args)
    monkeypatch.setenv("SQUEEZE10_MODELS", str(tmp_path / "models"))
    m = llama.load_checkpoint("tiny-llama", dtype=torch.bfloat16)
    assert m.tok_embeddings.weight.dtype == torch.bfloat16
    assert m(torch.tensor([TOKENS])).dtype == torch.float32


def test_meta_hidden_dim():
    assert llama.meta_hidden_dim(4096, 256) == 11008                    # LLaMA-2-7B
    assert llama.meta_hidden_dim(5120, 256) == 13824                    # LLaMA-2-13B
    assert llama.meta_hidden_dim(8192, 4096, ffn_dim_multiplier=1.3) == 28672  # LLaMA-2-70B


@pytest.fixture(scope="module")
def embedded():
    return llama.load_checkpoint()


def test_embedded_default_loads_and_completes(embedded):
    import data
    assert embedded.args.n_layers == 30 and embedded.args.n_kv_heads == 3 and embedded.args.tie_embeddings
    assert llama.num_params(embedded) == 134_515_008
    tok = data.load_tokenizer(data.embedded_model_path())
    x = torch.tensor([tok.encode("The capital of France is", bos=False)])
    with torch.inference_mode():
        for _ in range(2):
            x = torch.cat([x, embedded(x)[:, -1:].argmax(-1)], dim=1)
    assert tok.decode(x[0].tolist()) == "The capital of France is Paris."


def test_the_fp16_decode_head_is_an_explicit_switch(tiny_args, tiny_state):
    m = build(tiny_state, tiny_args)
    tokens = torch.tensor([TOKENS])
    normed = []                                          # the head's input at each pass
    m.norm.register_forward_hook(lambda mod, x, y: normed.append(y))
    with torch.inference_mode():
        full = m(tokens)
        for fp16 in (True, False):
            m.setup_cache(1, len(TOKENS), fp16_head=fp16, decode_path=False)   # forward(), whose norm we hook
            assert (m.decode_head is not None) == fp16
            normed.clear()
            steps = [m(tokens[:, :5])] + [m(tokens[:, i:i + 1], start=i) for i in range(5, len(TOKENS))]
            m.setup_cache(None, 0)
            assert m.decode_head is None
            head = m.output.weight.half() if fp16 else m.output.weight
            for h, logits in zip(normed[1:], steps[1:]):  # the one-token steps: the chosen head's logits, exactly
                assert torch.equal(logits, torch.nn.functional.linear(h.to(head.dtype), head).float())
            assert torch.equal(steps[0], m.output(normed[0]))  # the prefill (T > 1): the float32 head either way
            if not fp16:
                assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
        assert torch.equal(m(tokens), full)              # without a cache the switch changes nothing


@pytest.mark.parametrize("fp16", [False, True])
def test_the_decode_path_gives_forwards_logits(tiny_args, tiny_state, fp16):
    """model.Decoder (numba glue, buffers made once) against its plain twin, forward() with the same cache."""
    m = build(tiny_state, tiny_args)
    tokens = torch.tensor([TOKENS])
    steps = {}
    with torch.inference_mode():
        for decode_path in (True, False):
            m.setup_cache(1, len(TOKENS), fp16_head=fp16, decode_path=decode_path)
            assert (m.decoder is not None) == decode_path
            steps[decode_path] = [m(tokens[:, :5])] + [m(tokens[:, i:i + 1], start=i) for i in range(5, len(TOKENS))]
            caches = [(layer.attention.cache.k.clone(), layer.attention.cache.v.clone()) for layer in m.layers]
            steps[decode_path].append(caches)
            m.setup_cache(None, 0)
            assert m.decoder is None
        full = m(tokens)
    tol = 2e-3 if fp16 else 1e-5                       # float16 logits: a last-bit difference of the head's input
    for a, b in zip(steps[True][:-1], steps[False][:-1]):
        assert a.shape == b.shape == (1, a.shape[1], tiny_args.vocab_size)
        assert torch.allclose(a, b, rtol=tol, atol=tol)
    if not fp16:
        assert torch.allclose(torch.cat(steps[True][:-1], 1), full, atol=1e-5)
    for (k1, v1), (k2, v2) in zip(steps[True][-1], steps[False][-1]):   # the caches the steps wrote
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)


# -----------------------------------------------------------------------------
# Packed files whose metadata is malformed: one line naming the file, never a traceback

def packed_file(path, **meta):
    """A safetensors file with squeeze10 metadata (valid format and version, `meta` on top): enough for the
    loader to read the metadata and refuse it."""
    from safetensors.torch import save_file
    info = {"format": "squeeze10", "version": 2, "config": TINY, "tokenizer": "embedded",
            "linears": {"layers.0.attention.wq": {"shape": [32, 32], "layout": "columns"}}, **meta}
    save_file({"norm.weight": torch.ones(32)}, str(path), metadata={"squeeze10": json.dumps(info)})
    return path


@pytest.mark.parametrize("meta, message", [
    (dict(linears="layers.0.attention.wq"), "the metadata's linears are a JSON str, not an object"),
    (dict(linears=[1, 2]), "the metadata's linears are a JSON list, not an object"),
    (dict(linears={"layers.0.attention.wq": "trits"}), "the metadata's spec of layers.0.attention.wq is not an object"),
    (dict(linears={"layers.0.attention.wq": {"layout": "trits"}}), "spec of layers.0.attention.wq is not an object "
                                                                   "with a shape"),
    (dict(config="tiny"), "incomplete squeeze10 metadata"),
    (dict(config={**TINY, "dim": "32"}), "dim = '32' in the config is not a positive integer"),
    (dict(checksums="sha256"), "the metadata's checksums are damaged"),
    (dict(checksums={"algorithm": "sha256", "tensors": {"norm.weight": 5}}), "the metadata's checksums are damaged"),
    (dict(checksums={"algorithm": "sha256", "tensors": ["norm.weight"]}), "the metadata's checksums are damaged"),
])
def test_malformed_packed_metadata_is_one_checkpoint_error(tmp_path, meta, message):
    path = packed_file(tmp_path / "bad.safetensors", **meta)
    with pytest.raises(llama.CheckpointError) as e:
        llama.load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_packed_metadata_that_is_not_an_object_or_names_no_tokenizer_path(tmp_path):
    from safetensors.torch import save_file
    save_file({"norm.weight": torch.ones(32)}, str(tmp_path / "list.safetensors"), metadata={"squeeze10": "[1, 2]"})
    for call in (llama.load_checkpoint, llama.tokenizer_source, llama.checkpoint_format):
        with pytest.raises(llama.CheckpointError, match="list.safetensors: the squeeze10 metadata is a JSON list"):
            call(tmp_path / "list.safetensors")
    with pytest.raises(llama.CheckpointError, match="bad.safetensors: the metadata's tokenizer is 5, not a path"):
        llama.tokenizer_source(packed_file(tmp_path / "bad.safetensors", tokenizer=5))


def test_eval_refuses_linears_given_as_a_string_in_one_line(tmp_path):
    path = packed_file(tmp_path / "bad.safetensors", linears="layers.0.attention.wq")
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--ckpt", str(path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {path}: the metadata's linears are a JSON str, not an object of linear name -> "
                           "spec\n")


def test_the_load_tool_reports_the_shape_and_refuses_a_missing_path(tmp_path, capsys, tiny_args):
    from tools import load
    write_gguf(tmp_path / "tiny.gguf", tiny_args)
    assert load.main(["--ckpt", str(tmp_path / "tiny.gguf")]) == 0
    out = capsys.readouterr().out
    assert f"dim={tiny_args.dim}" in out and "parameters, loaded in" in out and "forward pass" in out
    assert load.main(["--ckpt", str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'missing.gguf'}: no such file")
