"""Tiny checkpoints written by the tests themselves, in each layout the loaders read.

The writers here are independent of model.py's readers: they split Meta shards by their own table and apply
Hugging Face's q/k permutation forwards, so a loader that undoes the wrong thing fails the comparison.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():  # Triton kernels run on the CPU, interpreted (read when kernels.py is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
# where the Triton kernels' tensors go: the GPU when there is one (compiled Triton takes CUDA tensors only)
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def on_triton_device(fn, x, tensors, *args, **kwargs):
    """fn(x, tensors, ...) with x and every tensor moved to TRITON_DEVICE; the result back on the CPU."""
    moved = {k: v.to(TRITON_DEVICE) for k, v in tensors.items()}
    args = [a.to(TRITON_DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
    return fn(x.to(TRITON_DEVICE), moved, *args, **kwargs).cpu()

import data  # noqa: E402
import model as llama  # noqa: E402

# dim 32 -> Meta's SwiGLU width: int(2 * 4 * 32 / 3) = 85, rounded up to a multiple of 16 = 96
TINY = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=96, norm_eps=1e-5,
            rope_theta=10000.0, max_seq_len=128)


def random_state(args: llama.ModelArgs, seed=0) -> dict:
    """A random LLaMA state dict in Meta's naming, with norms away from 1 so they matter."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in llama.Transformer(args).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.3 * torch.randn(shape)
        else:
            state[name] = torch.randn(shape) / shape[-1] ** 0.5
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


@pytest.fixture
def tiny_args():
    return llama.ModelArgs(**TINY)


@pytest.fixture
def tiny_state(tiny_args):
    return random_state(tiny_args)


def write_meta(path: Path, state: dict, args: llama.ModelArgs, shards=1):
    """Meta's layout: params.json + consolidated.NN.pth, tensors split across `shards` model-parallel ranks."""
    path.mkdir(parents=True, exist_ok=True)
    params = dict(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                  vocab_size=-1, multiple_of=16, norm_eps=args.norm_eps, rope_theta=args.rope_theta)
    (path / "params.json").write_text(json.dumps(params))
    split_dim = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}
    for rank in range(shards):
        part = {}
        for name, t in state.items():
            d = split_dim.get(name.split(".")[-2])
            part[name] = t.clone() if d is None else t.chunk(shards, dim=d)[rank].clone()
        torch.save(part, path / f"consolidated.{rank:02d}.pth")


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What HF's convert_llama_weights_to_hf.py does to q/k: interleaved pairs -> rotate-half halves."""
    out, inp = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def write_hf(path: Path, state: dict, args: llama.ModelArgs, shards=1):
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="llama", hidden_size=args.dim, num_hidden_layers=args.n_layers,
                  num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
                  intermediate_size=args.hidden_dim, vocab_size=args.vocab_size, rms_norm_eps=args.norm_eps,
                  rope_theta=args.rope_theta, tie_word_embeddings=args.tie_embeddings)
    (path / "config.json").write_text(json.dumps(config))
    hf = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"]}
    if not args.tie_embeddings:
        hf["lm_head.weight"] = state["output.weight"]
    for i in range(args.n_layers):
        p, m = f"layers.{i}.", f"model.layers.{i}."
        hf[m + "self_attn.q_proj.weight"] = hf_permute(state[p + "attention.wq.weight"], args.n_heads)
        hf[m + "self_attn.k_proj.weight"] = hf_permute(state[p + "attention.wk.weight"], args.n_kv_heads)
        hf[m + "self_attn.v_proj.weight"] = state[p + "attention.wv.weight"]
        hf[m + "self_attn.o_proj.weight"] = state[p + "attention.wo.weight"]
        hf[m + "mlp.gate_proj.weight"] = state[p + "feed_forward.w1.weight"]
        hf[m + "mlp.down_proj.weight"] = state[p + "feed_forward.w2.weight"]
        hf[m + "mlp.up_proj.weight"] = state[p + "feed_forward.w3.weight"]
        hf[m + "input_layernorm.weight"] = state[p + "attention_norm.weight"]
        hf[m + "post_attention_layernorm.weight"] = state[p + "ffn_norm.weight"]
    hf = {k: v.contiguous().clone() for k, v in hf.items()}
    if shards == 1:
        save_file(hf, str(path / "model.safetensors"))
        return
    names = sorted(hf)
    weight_map = {}
    for rank in range(shards):
        file = f"model-{rank + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: hf[n] for n in names[rank::shards]}
        save_file(chunk, str(path / file))
        weight_map.update({n: file for n in chunk})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


# -----------------------------------------------------------------------------
# GGUF: block-quantized tensors built byte by byte, so the test knows every value

def q8_0_blocks(rng, rows: int, cols: int):
    """Random Q8_0 bytes (per 32 values: fp16 scale d, 32 int8 q; value = d*q) and their values."""
    nb = cols // 32
    d = rng.uniform(0.001, 0.02, size=(rows, nb, 1)).astype(np.float16)
    q = rng.integers(-128, 128, size=(rows, nb, 32)).astype(np.int8)
    raw = np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=-1).reshape(rows, nb * 34)
    return raw, (d.astype(np.float32) * q).reshape(rows, cols)


def q4_1_blocks(rng, rows: int, cols: int):
    """Random Q4_1 bytes (per 32 values: fp16 d, fp16 m, 16 bytes of nibbles: value j in the low nibble of
    byte j, value j+16 in its high nibble; value = d*q + m) and their values."""
    nb = cols // 32
    d = rng.uniform(0.001, 0.02, size=(rows, nb, 1)).astype(np.float16)
    m = rng.uniform(-0.1, 0.0, size=(rows, nb, 1)).astype(np.float16)
    q = rng.integers(0, 16, size=(rows, nb, 32)).astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), packed], axis=-1).reshape(rows, nb * 20)
    values = d.astype(np.float32) * q + m.astype(np.float32)
    return raw, values.reshape(rows, cols)


def byte_level_vocab(merges: list[str]) -> list[str]:
    """A complete byte-level BPE vocabulary: the 256 byte characters, then one token per merge."""
    table = data.bytes_to_unicode()
    return [table[b] for b in range(256)] + [m.replace(" ", "") for m in merges]


def write_gguf(path: Path, args: llama.ModelArgs, seed=0, tokenizer=True, types=None) -> dict:
    """A tiny tied-embedding LLaMA GGUF: norms F32, embedding Q8_0, linears Q4_1 (or `types[name]` = (raw,
    GGMLQuantizationType) overrides). Returns the expected float values by our parameter name.

    `gguf` is a requirement: missing, it is an error, except under tools/gpu_check.py (SQUEEZE10_GPU_CHECK=1),
    whose bare GPU image has torch and triton but not gguf: there a test that needs it is skipped and counted."""
    if os.environ.get("SQUEEZE10_GPU_CHECK") == "1":
        pytest.importorskip("gguf", reason="gguf is not installed on this GPU machine (a tiny GGUF is the fixture)")
    import gguf
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(args.n_layers)
    w.add_embedding_length(args.dim)
    w.add_feed_forward_length(args.hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_context_length(args.max_seq_len)
    if tokenizer:
        merges = ["h e", "l l", "he ll", "Ġ w", "o r"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(byte_level_vocab(merges))
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
    expected = {}
    Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    raw, expected["tok_embeddings.weight"] = q8_0_blocks(rng, args.vocab_size, args.dim)
    w.add_tensor("token_embd.weight", raw, raw_dtype=Q8_0)
    norm = (1 + 0.2 * rng.standard_normal(args.dim)).astype(np.float32)
    w.add_tensor("output_norm.weight", norm)
    expected["norm.weight"] = norm
    hd = args.dim // args.n_heads
    linears = {"attn_q": ("attention.wq", args.n_heads * hd, args.dim),
               "attn_k": ("attention.wk", args.n_kv_heads * hd, args.dim),
               "attn_v": ("attention.wv", args.n_kv_heads * hd, args.dim),
               "attn_output": ("attention.wo", args.dim, args.n_heads * hd),
               "ffn_gate": ("feed_forward.w1", args.hidden_dim, args.dim),
               "ffn_down": ("feed_forward.w2", args.dim, args.hidden_dim),
               "ffn_up": ("feed_forward.w3", args.hidden_dim, args.dim)}
    for i in range(args.n_layers):
        for g, (ours, rows, cols) in linears.items():
            name = f"blk.{i}.{g}.weight"
            raw, expected[f"layers.{i}.{ours}.weight"] = q4_1_blocks(rng, rows, cols)
            if types and name in types:
                raw, qtype = types[name]
                w.add_tensor(name, raw, raw_dtype=qtype)
            else:
                w.add_tensor(name, raw, raw_dtype=Q4_1)
        for g, ours in (("attn_norm", "attention_norm"), ("ffn_norm", "ffn_norm")):
            norm = (1 + 0.2 * rng.standard_normal(args.dim)).astype(np.float32)
            w.add_tensor(f"blk.{i}.{g}.weight", norm)
            expected[f"layers.{i}.{ours}.weight"] = norm
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def train_sentencepiece(path: Path, vocab_size=64) -> Path:
    """A small BPE sentencepiece model trained on a few sentences (LLaMA's settings: BOS=1, EOS=2, byte fallback)."""
    import sentencepiece as spm
    sentences = ["the quick brown fox jumps over the lazy dog", "a tiny llama reads the wiki text",
                 "quantization squeezes weights to one bit", "numbers like 1234 and 56 split into digits",
                 "hello world, hello llama, hello bits"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(path.with_suffix("")),
                                   vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
                                   hard_vocab_limit=False)
    return path.with_suffix(".model")
