"""squeeze10.py — Squeeze10-LLM (Zhu et al. 2025, arXiv 2507.18073): LLaMA weights at ~1.6 bits, really packed.

    python squeeze10.py                                # the embedded SmolLM2-135M, preset squeeze10
    python squeeze10.py --ckpt llama2-7b --calib c4 ~/data/c4 --device cuda
    python squeeze10.py --preset pbllm --json          # a baseline, same harness
    python squeeze10.py --synthetic llama2-7b --blocks 2 --device cuda   # time the pipeline at 7B size
    python eval.py --ckpt out/SmolLM2-135M-Instruct.squeeze10.safetensors

Every linear layer of every transformer block becomes a mix of 1-bit and 4-bit weights: 80% binarized, the
20% most salient kept on a 4-bit grid. Two formats (presets) hold them:
- `squeeze10` (the default, format version 2, ~1.9 true bits per weight): the salient weights are whole input
  columns shared by blocks of 32 rows, μ, α and the grid scales are float8, and the binary weights carry one
  scale per input column (ARB-LLM's "RC"); no 4-bit stage (it measured worse). See ../shared/METHOD.md
  "Version 2" and the README, which measures every one of these choices.
- `paper` (format version 1, 2.917 bits): the paper as METHOD.md reads it, each row-group choosing its own
  26 salient weights, fp16 parameters, the staged 4-bit step.
The file reads in the order the method runs:

1. Calibration and FIAS ("Full Information Activation Supervision"). Two activation streams run through the
   calibration set, one block at a time: X_fp, the full-precision model's own activations, and X_q, those
   of the model quantized so far. Each group of linears sharing an input is quantized so that its output on
   the inputs it will really see reproduces the full-precision output: min ‖W·X_fpᵀ − Ŵ·X_qᵀ‖². That is
   ordinary GPTQ on the re-fitted target W* = W·(C + δI)·(H̃ + δI)⁻¹ (`fias_target`), so errors stop
   compounding from block to block. `--fias input` and `--fias off` are the other two readings.
2. Stage 1, staged quantization: GPTQ of the whole layer to `mid_bits` (4) gives W_mid (`gptq`).
3. PBAR ("Post-Binarization Activation Robustness"): salience M = V/mean V + λ·B/mean B, with V the
   Hessian term (the OBS loss of removing a weight) and B = |binarization error|·(input channel range), a
   bound on how far binarizing that weight widens its output channel's range (`pbar_salience`).
4. Stage 3: in every row-group the k = round(0.2·width) weights of largest M stay at 4 bits (version 2:
   the K = round(0.2·in) columns of largest M summed over a block's rows, `column_mask`), the rest become
   μ ± α (version 2: μ ± α·c_j, `column_scales`), and a second GPTQ pass over W_mid compensates the error
   column by column (`RowGroupQuantizer`). Optional, both off by default: the closed-form `refit` of μ, α,
   scale for the fixed codes, and `tune_block`, Adam steps on them against the full-precision block's output.
5. Packing into a safetensors file whose size proves its bits (`pack_linear`; read back by kernels.py).
6. The report: bits from the file's bytes, output error against the full-precision layer, time, memory.

The paper's text is not available; ../shared/METHOD.md fixes the interpretation, and these are the places it
(or this file) interprets — each one a constant or a flag:
- H = 2·XᵀX/n_tokens, damped by 0.01·mean(diag H); dead inputs as GPTQ. Groups of 128 input columns; the
  last group is narrower when `in` is not a multiple of 128 (SmolLM2: in = 576).
- FIAS `target` is the reading above; the naive W·C·H̃⁻¹ would shrink W where the streams agree.
- λ is applied to the layer-normalised terms (the paper's raw λ = 3e-4 belongs to its own scaling).
- Binarization is μ + α·sign(w − μ) with μ, α fitted on the row-group's non-salient weights; the high grid
  is GPTQ's asymmetric min–max grid (zero included in the range) over the salient weights only.
- Stage 3 re-quantizes W_mid, the stage-1 result (METHOD.md's reading of "staged"). `--stage3-from fp` is
  the other reading the README measures: stage 1 only ranks the weights (PBAR on W_mid), stage 3 starts
  from W itself.
- Grid and binary parameters are rounded to fp16 before the weights are rounded onto them, so the packed
  file reproduces the quantizer's output bit for bit and GPTQ compensates the parameters' rounding too.
- Which weights are salient is stored as a three-way state per weight (−, +, salient), five states per
  byte: 1.6 bits for what a sign (0.8) plus a bitmap (1.0) would store in 1.8 — see the layout below.

The packed format (version 1). One safetensors file; its metadata holds a single key, "squeeze10", whose
JSON value has "format": "squeeze10", "version", the model config, the settings, the per-linear specs and
the bits report. Every tensor that is not a block linear (embeddings, norms, output head) is stored as fp16.
A quantized linear `P` = "layers.{i}.{attention.wq|...|feed_forward.w3}" of shape (out, in) has row-groups
g = 0..ng-1 of width w_g (128, the last one possibly narrower) and k_g = round(salient·w_g) salient weights
(k_g = 0 for an all-binary layer, k_g = w_g for an all-grid layer). Its tensors, each row-major with one
row per output channel; inside a row the row-groups follow each other in order, each on a byte boundary:

    struct packed_linear {                                  // layout: which tensors exist
        uint8 trits[out][Σ_g ceil(w_g/5)];   // "trits" (0 < salient < 1): weight p of a row-group is base-3
                                             //   digit p%5 of the group's byte p/5 (least significant first):
                                             //   0 -> μ−α, 1 -> μ+α, 2 -> salient; digits past w_g are 0
        uint8 signs[out][Σ_g ceil(w_g/8)];   // "signs" (all binary): bit p%8 of byte p/8, least significant
                                             //   first; 1 -> μ+α, 0 -> μ−α
        uint8 high[out][Σ_g ceil(k_g·high_bits/8)];  // "trits", "grid": the k_g salient codes of each
                                             //   row-group in column order, high_bits each, LSB first
        fp16  binary[out][ng][2];            // "trits", "signs": μ, α of each row-group
        fp16  scale[out][ng];                // "trits", "grid": salient w = scale · (code − zero)
        uint8 zero[out][ng];
    };

Each tensor is stored as "P.trits", "P.high", ... Because k_g is fixed, every row-group of every row starts
at a fixed byte offset; `pack_linear` asserts each size against kernels.expected_shapes, which the reader
checks again.

The packed format (version 2, layout "columns"; beyond the paper, ../shared/METHOD.md "Version 2"). The salient
set is structured: the rows of a linear are cut into blocks of R = block_rows rows (the last one possibly
shorter), and all rows of a block keep the same K = round(salient·in) input columns on the grid, so the
index costs in bits per block instead of ~0.8 bits per weight. Within a row, the binary weights and the
salient codes are each stored contiguously in column order: permute x per block (binary columns first) and
W·x is a dense 1-bit product plus a dense high_bits one. Parameters stay per row-group of G original columns;
with "scales": "fp8" they are float8 e4m3 numbers in units of 2^unit_exp (one power of two per linear):

    struct packed_linear_v2 {                               // spec: block_rows R, k K, scales, unit_exp
        uint8 columns[ceil(out/R)][ceil(in/8)];  // bit j%8 of byte j/8 (LSB first): column j is salient in
                                             //   every row of the block; exactly K bits set per block
        uint8 signs[out][ceil((in−K)/8)];    // the row's in−K binary weights in column order, 1 bit each,
                                             //   LSB first: 1 -> μ+α, 0 -> μ−α (μ, α of the weight's row-group)
        uint8 high[out][ceil(K·high_bits/8)];    // the row's K salient codes in column order, LSB first
        fp8|fp16 binary[out][ng][2];         // μ, α of each row-group (over its binary weights)
        fp8|fp16 scale[out][ng];             // salient w = scale · (code − zero), per row-group
        uint8 zero[out][ceil(ng·high_bits/8)];   // the ng zero points, high_bits each, LSB first
        fp8|fp16 colscale[in];               // "column_scale": binary w = μ ± α·colscale[j] (ARB-LLM's RC),
                                             //   as stored: fp8 without a unit (c is normalised to mean 1)
    };

A file is version 2 when any linear uses this layout; the other layouts write version 1, as before.
"""
import argparse
import copy
import glob
import json
import math
import os
import resource
import stat
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import save_file

import data
import kernels
import model as llama
from tools import cli

GROUP_SIZE = 128      # input columns per row-group (METHOD.md's G)
DAMP = 0.01           # δ = DAMP · mean(diag H)
LAM = 1.0             # PBAR's weight on the normalised range term (chosen by the sweep in the README)
CHUNK_TOKENS = 8192   # calibration tokens pushed through a block at once (bounds the transient memory)
FP8_MAX = 448.0       # float8 e4m3's largest value

STEPS = (  # a block's linears, grouped by shared input, in the order the forward pass reaches them
    ("attention.wq", "attention.wk", "attention.wv"),
    ("attention.wo",),
    ("feed_forward.w1", "feed_forward.w3"),
    ("feed_forward.w2",),
)


class SettingsError(ValueError):
    """Bad settings or arguments: a one-line message."""


@dataclass
class Settings:
    """The field defaults are the paper's method as METHOD.md reads it (preset `paper`, format version 1);
    preset `squeeze10`, the default, changes the fields in VERSION2."""
    mid_bits: int = 4          # stage 1 grid; 16 skips the stage (W_mid = W)
    salient: float = 0.2       # fraction of each row-group kept on the high grid (0: all binary, 1: no binary)
    high_bits: int = 4         # the salient weights' grid
    lam: float = LAM           # PBAR: M = V/mean V + lam · B/mean B
    pbar: bool = True          # False: M = V (Hessian-only salience, PB-LLM/BiLLM)
    fias: str = "target"       # target | input | off
    compensate: bool = True    # GPTQ error feedback (False: round to nearest)
    stage3_from: str = "mid"   # stage 3 quantizes W_mid (METHOD.md), or "fp": W itself, stage 1 only ranks
    group_size: int = GROUP_SIZE
    damp: float = DAMP
    structure: str = "groups"  # groups (version 1: each row-group of each row picks its own k salient weights)
                               # | columns (version 2: K salient input columns shared by block_rows rows)
    block_rows: int = 0        # columns: rows that share one choice of salient columns (0: the whole layer)
    scales: str = "fp16"       # fp16 (version 1) | fp8: μ, α, scale as float8 e4m3 × a power of two per linear
    refit: bool = False        # re-fit μ, α, scale in closed form to the layer objective once the codes are fixed
    column_scale: bool = False  # columns: binary weights μ ± α·c_j, one c per input column (ARB-LLM's RC)
    tune_steps: int = 0        # Adam steps of block-wise tuning of μ, α, scale against the fp block's output


VERSION2 = dict(structure="columns", block_rows=32, scales="fp8", column_scale=True, mid_bits=16)
PRESETS = {  # METHOD.md's table: baselines are presets of the same pipeline
    "squeeze10": Settings(**VERSION2),   # the default: version 2, ~1.9 bits (README: "Version 2")
    "paper": Settings(),                 # the paper-faithful format (version 1, 2.917 bits): the field defaults
    "pbllm": Settings(mid_bits=16, salient=0.1, high_bits=8, pbar=False, fias="off"),
    "gptq2": Settings(mid_bits=16, salient=1.0, high_bits=2, pbar=False, fias="off"),
    "gptq3": Settings(mid_bits=16, salient=1.0, high_bits=3, pbar=False, fias="off"),
    "gptq4": Settings(mid_bits=16, salient=1.0, high_bits=4, pbar=False, fias="off"),
    "xnor": Settings(mid_bits=16, salient=0.0, pbar=False, fias="off", compensate=False),
}
FIAS_MODES = ("target", "input", "off")
STRUCTURES = ("groups", "columns")
SCALES = ("fp16", "fp8")


def check_settings(s: Settings):
    if not 2 <= s.mid_bits <= 16:
        raise SettingsError(f"--mid-bits {s.mid_bits}: must be 2..16 (16 skips the staged 4-bit step)")
    if not 0 <= s.salient <= 1:
        raise SettingsError(f"--salient {s.salient}: must be in (0, 1]")
    if not 2 <= s.high_bits <= 8:
        raise SettingsError(f"--high-bits {s.high_bits}: must be 2..8")
    if not (s.lam >= 0 and math.isfinite(s.lam)):
        raise SettingsError(f"--lam {s.lam}: must be a finite number >= 0")
    if s.stage3_from not in ("mid", "fp"):
        raise SettingsError(f"--stage3-from {s.stage3_from}: must be mid or fp")
    if s.fias not in FIAS_MODES:
        raise SettingsError(f"--fias {s.fias}: must be one of {', '.join(FIAS_MODES)}")
    if s.structure not in STRUCTURES:
        raise SettingsError(f"--structure {s.structure}: must be one of {', '.join(STRUCTURES)}")
    if s.tune_steps < 0:
        raise SettingsError(f"--tune-steps {s.tune_steps}: must be at least 0")
    if s.block_rows < 0:
        raise SettingsError(f"--block-rows {s.block_rows}: must be at least 0 (0: all rows of a layer)")
    if s.scales not in SCALES:
        raise SettingsError(f"--scales {s.scales}: must be one of {', '.join(SCALES)}")
    if s.column_scale and layout_of(s) != kernels.COLUMNS:
        raise SettingsError("--column-scale: only the columns layout (--structure columns, 0 < --salient < 1)")
    if s.scales == "fp8" and layout_of(s) != kernels.COLUMNS:
        raise SettingsError("--scales fp8: only the columns layout (--structure columns, 0 < --salient < 1) stores fp8")


def salient_count(width: int, salient: float) -> int:
    """k = round(salient · width), halves rounded up (0.2 · 128 = 25.6 -> 26, 0.2 · 64 = 12.8 -> 13)."""
    return int(math.floor(salient * width + 0.5))


def layout_of(s: Settings) -> str:
    if s.salient == 0 or s.salient == 1:
        return "signs" if s.salient == 0 else "grid"
    return kernels.COLUMNS if s.structure == "columns" else "trits"


# -----------------------------------------------------------------------------
# 1. Calibration and FIAS: two activation streams, one block at a time

def block_steps(block, x, freqs_cis):
    """A transformer block's forward pass, paused before each group of linears that share an input: yields
    that input, so that the caller can quantize those linears in place before the pass goes on. Yields the
    block's output last. Mirrors model.TransformerBlock.forward; `del` frees what a paused pass no longer
    needs (a 7B block at 128 × 2048 tokens: 4 GiB per (B, T, dim) tensor)."""
    a = block.attention_norm(x)
    yield a                                                  # input of wq, wk, wv: (B, T, dim)
    m = block.attention.mix(a, freqs_cis)
    del a
    yield m                                                  # input of wo: (B, T, dim)
    h = x + block.attention.wo(m)
    del x, m
    f = block.ffn_norm(h)
    yield f                                                  # input of w1, w3: (B, T, dim)
    g = block.feed_forward.hidden(f)
    del f
    yield g                                                  # input of w2: (B, T, hidden_dim)
    out = h + block.feed_forward.w2(g)
    del h, g
    yield out                                                # the block's output


class Stats:
    """What quantizing one group of linears needs from its calibration inputs, summed chunk by chunk:
    XᵀX of the inputs the objective sees, X_fpᵀX_q (FIAS target), and each input channel's range (PBAR)."""

    def __init__(self, fias: str):
        self.fias, self.n = fias, 0
        self.xx = self.fq = self.lo = self.hi = None

    def add(self, x_fp, x_q):
        x_fp, x_q = x_fp.reshape(-1, x_fp.shape[-1]).float(), x_q.reshape(-1, x_q.shape[-1]).float()
        x = x_fp if self.fias == "input" else x_q           # (tokens, in)
        if self.xx is None:
            d = x.shape[1]
            self.xx = torch.zeros(d, d, device=x.device)
            self.fq = torch.zeros(d, d, device=x.device) if self.fias == "target" else None
            self.lo, self.hi = x.amin(0), x.amax(0)
        self.xx.addmm_(x.T, x)
        if self.fq is not None:
            self.fq.addmm_(x_fp.T, x_q)
        self.lo, self.hi = torch.minimum(self.lo, x.amin(0)), torch.maximum(self.hi, x.amax(0))
        self.n += x.shape[0]

    def hessian(self):
        return 2 * self.xx / self.n          # H = 2·XᵀX / n_tokens

    def cross(self):
        return 2 * self.fq / self.n          # C = 2·X_fpᵀX_q / n_tokens

    def ranges(self):
        return self.hi - self.lo             # r_j = max_t X_tj − min_t X_tj


def fias_target(W, H, C, delta):
    """W* = W·(C + δI)·(H + δI)⁻¹, with H already damped (H = H̃ + δI).

    ‖W·X_fpᵀ − Ŵ·X_qᵀ‖² + δ‖W − Ŵ‖² = const + ‖(W* − Ŵ)·X_qᵀ‖² + δ‖W* − Ŵ‖² (in units of n/2), so every
    stage below quantizes W* against H unchanged. Where the streams agree (C = H̃), W* = W. Solved in
    float64 through H's Cholesky factor; never inverted."""
    L = safe_cholesky(H.double())
    C = C.double()
    C.diagonal().add_(delta)                                  # C + δI, without an (in, in) identity
    rhs = C.T @ W.double().T                                  # (in, out)
    return torch.cholesky_solve(rhs, L).T.to(W.dtype)


class OutputErrors:
    """Σ‖Ŵ·x_q − W·x_fp‖² and Σ‖W·x_fp‖² for every linear of a block: forward hooks on both blocks pair the
    full-precision layer's output with the quantized layer's, as the two streams run chunk by chunk."""

    def __init__(self, fp_block, q_block):
        self.fp_out, self.err, self.ref = {}, {}, {}
        self.handles = []
        for name, mod in fp_block.named_modules():
            if isinstance(mod, nn.Linear):
                self.handles.append(mod.register_forward_hook(self._keep(name)))
                self.handles.append(q_block.get_submodule(name).register_forward_hook(self._compare(name)))

    def _keep(self, name):
        def hook(module, inputs, output):
            self.fp_out[name] = output
        return hook

    def _compare(self, name):
        def hook(module, inputs, output):
            ref = self.fp_out.pop(name).float()
            self.err[name] = self.err.get(name, 0.0) + torch.linalg.vector_norm(output.float() - ref).item() ** 2
            self.ref[name] = self.ref.get(name, 0.0) + torch.linalg.vector_norm(ref).item() ** 2
        return hook

    def relative(self, name) -> float:
        return math.sqrt(self.err[name] / max(self.ref[name], 1e-30))

    def remove(self):
        for h in self.handles:
            h.remove()


# -----------------------------------------------------------------------------
# 2. Stage 1 — GPTQ (and the quantizer that stage 3 reuses)

def inverse_cholesky(H):
    """U, the upper Cholesky factor of H⁻¹ (GPTQ's Hinv): d_j = U_jj scales column j's error."""
    return safe_cholesky(torch.cholesky_inverse(safe_cholesky(H)), upper=True)


class RowGroupQuantizer:
    """Rounds weights onto per-row-group parameters, fitted when GPTQ's loop enters the group: salient
    weights (mask True) onto a `bits`-bit asymmetric min–max grid, the others onto μ ± α. `mask=None`: every
    weight on the grid (stage 1, the GPTQ presets). Records each weight's code (grid code or sign bit).
    Works on columns: `fit` sees a group as (out, width), `__call__` one column (out,) at a time."""

    def __init__(self, shape, group_size: int, bits: int, mask=None, device="cpu", unit=None, colscale=None):
        out, n = shape
        ng = math.ceil(n / group_size)
        self.G, self.maxq = group_size, 2 ** bits - 1
        self.unit = None if unit is None else unit.to(device)[:, None]   # fp8 scales: each row's power of two
        # column scaling of the signs (ARB-LLM's "RC"): binary w_ij = μ ± α·c_j; colscale (out, in), each
        # linear's c repeated over its rows
        self.colscale_t = None if colscale is None else colscale.to(device).T.contiguous()
        mask = torch.ones(out, n, dtype=torch.bool, device=device) if mask is None else mask.to(device)
        self.mask_t = mask.T.contiguous()                          # (in, out): column j is row j
        self.has_grid, self.has_binary = bool(mask.any()), not bool(mask.all())
        self.scale, self.zero = torch.ones(out, ng, device=device), torch.zeros(out, ng, device=device)
        self.mu, self.alpha = torch.zeros(out, ng, device=device), torch.zeros(out, ng, device=device)
        self.codes_t = torch.zeros(n, out, dtype=torch.uint8, device=device)

    def fit(self, w, g: int):
        """w: (out, width) the current (compensated) weights of row-group g."""
        m = self.mask_t[g * self.G:g * self.G + w.shape[1]].T
        if self.has_grid:   # GPTQ's grid: [min(x, 0), max(x, 0)] in maxq steps, over the salient weights only
            hi = torch.where(m, w, -torch.inf).amax(1).clamp(min=0)
            lo = torch.where(m, w, torch.inf).amin(1).clamp(max=0)
            scale = self.round(((hi - lo) / self.maxq)[:, None], positive=True)[:, 0]
            self.scale[:, g], self.zero[:, g] = scale, (-lo / scale).round().clamp(0, self.maxq)
        if self.has_binary:  # μ ± α over the non-salient weights only
            count = (~m).sum(1).clamp(min=1)
            mu = torch.where(m, 0, w).sum(1) / count
            if self.colscale_t is None:
                alpha = torch.where(m, 0, (w - mu[:, None]).abs()).sum(1) / count
            else:           # least squares for μ ± α·c_j: α = Σ c_j·|w_j − μ| / Σ c_j²
                c = self.colscale_t[g * self.G:g * self.G + w.shape[1]].T
                alpha = torch.where(m, 0, c * (w - mu[:, None]).abs()).sum(1) / \
                    torch.where(m, 0, c * c).sum(1).clamp(min=1e-30)
            self.mu[:, g], self.alpha[:, g] = self.round(mu[:, None])[:, 0], self.round(alpha[:, None])[:, 0]
        self.s, self.z, self.centre = self.scale[:, g].clone(), self.zero[:, g].clone(), self.mu[:, g].clone()
        self.a = self.alpha[:, g].clone()
        self.plus, self.minus = self.mu[:, g] + self.alpha[:, g], self.mu[:, g] - self.alpha[:, g]

    def __call__(self, w, j: int):
        """Column w (out,) at input index j -> its quantized values (out,)."""
        if self.has_grid:
            code = torch.round(w / self.s).add_(self.z).clamp_(0, self.maxq)
            high = self.s * (code - self.z)                     # the same arithmetic as kernels.dequantize
            if not self.has_binary:
                self.codes_t[j] = code
                return high
        plus = w >= self.centre
        if self.colscale_t is None:
            low = torch.where(plus, self.plus, self.minus)
        else:
            ac = self.a * self.colscale_t[j]                    # the arithmetic of kernels.dequantize_columns
            low = torch.where(plus, self.centre + ac, self.centre - ac)
        if not self.has_grid:
            self.codes_t[j] = plus
            return low
        m = self.mask_t[j]
        self.codes_t[j] = torch.where(m, code, plus.float())
        return torch.where(m, high, low)

    @property
    def codes(self):
        return self.codes_t.T

    def round(self, p, positive=False):
        """Parameters (out, m) rounded to their stored precision: fp16, or float8 e4m3 in units of each row's
        power of two. `positive`: a grid step, kept above zero."""
        return round_params(p, self.unit, positive)


def round_params(p, unit=None, positive=False):
    """p (rows, m) -> the nearest stored value: fp16 when unit is None, else unit · float8_e4m3(p / unit)."""
    if unit is None:
        return (p.clamp(min=2 ** -24) if positive else p).half().float()
    q = (p / unit).clamp(-FP8_MAX, FP8_MAX)
    if positive:
        q = q.clamp(min=2 ** -9)                              # e4m3's smallest step
    return q.to(torch.float8_e4m3fn).float() * unit


def fp8_unit(W):
    """One power of two per row of W (out, in), shared by a linear's rows: a linear's largest |w| maps to
    ≤ 256 of e4m3's 448, leaving room for the compensation to grow weights; 2^-14 of it is still normal."""
    top = W.abs().amax().clamp(min=2 ** -60).item()
    return torch.full((W.shape[0],), 2.0 ** (math.ceil(math.log2(top)) - 8))


def gptq(W, U, quantizer, group_size: int, compensate: bool = True):
    """GPTQ (Frantar et al. 2022): quantize W (out, in) one column at a time, in order, and spread each
    column's error over the columns not yet quantized along the rows of U (the upper Cholesky factor of
    H⁻¹), which minimises ‖(W − Ŵ)·Xᵀ‖² for the H = 2XᵀX/n that U came from. Lazy batch updates: inside a
    row-group only the group's columns are updated; the rest get one matmul per group. Returns Ŵ.
    Works on Wᵀ, so that a column is a contiguous row."""
    Wt = W.T.contiguous()                                       # (in, out)
    n = Wt.shape[0]
    for g0 in range(0, n, group_size):
        g1 = min(g0 + group_size, n)
        quantizer.fit(Wt[g0:g1].T, g0 // group_size)
        Err = torch.empty(g1 - g0, Wt.shape[1], device=Wt.device)
        for j in range(g0, g1):
            q = quantizer(Wt[j], j)
            if compensate:
                err = Err[j - g0]
                torch.sub(Wt[j], q, out=err).div_(U[j, j])
                Wt[j + 1:g1].addr_(U[j, j + 1:g1], err, alpha=-1)
            Wt[j] = q                                           # quantized columns are never updated again
        if compensate and g1 < n:
            Wt[g1:].addmm_(U[g0:g1, g1:].T, Err, alpha=-1)
    return Wt.T.contiguous()


# -----------------------------------------------------------------------------
# 3. PBAR salience

def binarize(W, group_size: int):
    """Each row-group's candidate binarization: μ + α·sign(w − μ), μ = mean(w), α = mean|w − μ| (w ≥ μ -> +)."""
    out = torch.empty_like(W)
    for g0 in range(0, W.shape[1], group_size):
        w = W[:, g0:g0 + group_size]
        mu = w.mean(1, keepdim=True)
        alpha = (w - mu).abs().mean(1, keepdim=True)
        out[:, g0:g0 + group_size] = torch.where(w >= mu, mu + alpha, mu - alpha)
    return out


def pbar_salience(W_mid, d, r, lam: float, group_size: int, pbar: bool = True):
    """M = V/mean(V) + λ·B/mean(B) over one linear layer (so λ means the same on every layer and model).

    V_ij = W_mid_ij² / d_j²: the Hessian term, the OBS loss of removing weight ij (PB-LLM, BiLLM).
    B_ij = |Δ_ij|·r_j: Δ = binarize(W_mid) − W_mid changes output channel i at token t by Δ_ij·X_tj, so B
    bounds how far binarizing w_ij widens channel i's activation range (r_j: input channel j's range)."""
    V = W_mid.pow(2) / d.pow(2)
    if not pbar:
        return V
    B = (binarize(W_mid, group_size) - W_mid).abs() * r
    return V / V.mean().clamp(min=1e-30) + lam * B / B.mean().clamp(min=1e-30)


def salient_mask(M, salient: float, group_size: int):
    """True at the k = round(salient · width) largest entries of M in every row-group."""
    mask = torch.zeros(M.shape, dtype=torch.bool, device=M.device)
    for g0 in range(0, M.shape[1], group_size):
        m = M[:, g0:g0 + group_size]
        k = salient_count(m.shape[1], salient)
        if k:
            mask[:, g0:g0 + m.shape[1]].scatter_(1, m.topk(k, dim=1).indices, True)
    return mask


def column_mask(M, salient: float, block_rows: int):
    """Version 2's structured salient set: every block of `block_rows` rows (0: all rows) keeps the same
    K = round(salient · in) input columns, those with the largest M summed over the block's rows."""
    out, n = M.shape
    R = block_rows or out
    K = salient_count(n, salient)
    mask = torch.zeros(M.shape, dtype=torch.bool, device=M.device)
    for r0 in range(0, out, R):
        score = M[r0:r0 + R].sum(0)                             # (in,): PBAR aggregated over the rows it serves
        mask[r0:r0 + R, score.topk(K).indices] = True
    return mask


COLSCALE_ITERS = 4    # alternations of the row and column factors in `column_scales`


def column_scales(W, mask, G: int, dtype=torch.float16):
    """ARB-LLM's row × column scaling of the signs, fitted once per linear before stage 3: the binary
    weights W_ij (mask False) ≈ μ_ig ± α_ig·c_j, with μ the row-group's mean, by alternating least squares
    for α (per row-group) and c (per input column), c normalised to mean 1 and rounded to `dtype`
    (fp16, or float8 e4m3 around 1). Returns c (in,)."""
    out, n = W.shape
    col_group = torch.arange(n, device=W.device) // G
    binary = (~mask).float()
    ng = math.ceil(n / G)

    def group_sum(x):                                          # (out, in) -> (out, ng)
        return torch.zeros(out, ng, device=W.device).index_add_(1, col_group, x)
    mu = group_sum(W * binary) / group_sum(binary).clamp(min=1)
    D = (W - mu[:, col_group]).abs() * binary                   # |w − μ| on the binary weights
    c = torch.ones(n, device=W.device)
    for _ in range(COLSCALE_ITERS):
        alpha = group_sum(D * c) / group_sum(binary * c * c).clamp(min=1e-30)        # (out, ng)
        a = alpha[:, col_group] * binary
        c = (a * D).sum(0) / (a * a).sum(0).clamp(min=1e-30)
        c = c / c[binary.any(0)].mean().clamp(min=1e-30)
    return c.clamp(2 ** -6, 448).to(dtype).float()


# -----------------------------------------------------------------------------
# 4. Stage 3, and the whole pipeline for one group of linears

REFIT_RIDGE = 1e-6    # the refit's pull toward the old parameters, relative to mean diag(BᵀHB): fixes what the
                      # objective leaves free (μ, α collinear where a row-group's signs agree; absent parts)


def dequantized(q: RowGroupQuantizer, mask):
    """Ŵ (out, in) from the quantizer's codes and parameters: the arithmetic of kernels.dequantize."""
    rec = dict(codes=q.codes, mask=mask, mu=q.mu, alpha=q.alpha, scale=q.scale, zero=q.zero, group_size=q.G)
    if q.colscale_t is not None:
        rec["colscale"] = q.colscale_t.T
    return record_weight(rec)


def refit_system(W, H, codes, mask, zero, G: int, colscale=None):
    """The refit's normal equations for rows W (rows, in), in float64: A (rows, P, P) = B_iᵀHB_i and
    b (rows, P) = B_iᵀH·w_i, parameters in the order [μ_g for every row-group g, then α_g, then scale_g].

    Row i's weights are linear in its parameters: ŵ_i = B_i·p_i, the columns of B_i being the indicator of
    row-group g's binary weights (μ_g), their signs (α_g), and g's salient codes − zero (scale_g).
    H·B_i costs one (rows × G) @ (G × in) product per row-group and part: 3·rows·in² in all."""
    rows, n = W.shape
    ng = math.ceil(n / G)
    pad = ng * G - n
    col_group = torch.arange(n, device=W.device) // G
    codes = codes.double()
    parts = torch.stack([(~mask).double(),                                    # μ: the binary weights
                         torch.where(mask, 0.0, (2 * codes - 1) * (1 if colscale is None else colscale.double())),
                                                                              # α: their signs (× c_j)
                         torch.where(mask, codes - zero[:, col_group].double(), 0.0)])  # scale: code − zero
    Hd = H.double()
    P = 3 * ng

    def per_group(x):                                          # (3, rows, in) -> (rows, P): sums per row-group
        x = torch.nn.functional.pad(x, (0, pad)).view(3, rows, ng, G).sum(-1)
        return x.permute(1, 0, 2).reshape(rows, P)
    A = torch.zeros(rows, P, P, dtype=torch.float64, device=W.device)
    for g in range(ng):
        cols = slice(g * G, min(n, (g + 1) * G))
        for t in range(3):
            HB = parts[t][:, cols] @ Hd[cols]                  # (rows, in): H·(column (t, g) of B_i), every row i
            A[:, :, t * ng + g] = per_group(parts * HB)
    b = per_group(parts * (W.double() @ Hd))
    return A, b


REFIT_ROWS = 1 << 24   # rows × in solved at once: bounds the refit's float64 temporaries (~0.4 GB each)


def refit(W, H, q: RowGroupQuantizer, mask, G: int):
    """Closed-form re-fit of every row's continuous parameters for the fixed codes (METHOD.md, version 2).

    The layer objective Σ_i (w_i − B_i p_i)ᵀH(w_i − B_i p_i) (W: the FIAS target, H damped) is minimised row
    by row by (B_iᵀHB_i + εI)·p_i = B_iᵀH·w_i + ε·p_old (`refit_system`): ε pulls what the objective leaves
    free toward the old values. The result is rounded to the stored precision, and each row keeps its old
    parameters where the rounded refit does not lower the objective. Updates q; returns the new Ŵ."""
    ng = q.mu.shape[1]
    step = max(1, REFIT_ROWS // W.shape[1])
    for r0 in range(0, W.shape[0], step):
        rows = slice(r0, r0 + step)
        colscale = None if q.colscale_t is None else q.colscale_t.T[rows]
        A, b = refit_system(W[rows], H, q.codes[rows], mask[rows], q.zero[rows], G, colscale)
        old = torch.cat([q.mu[rows], q.alpha[rows], q.scale[rows]], 1).double()
        eps = REFIT_RIDGE * A.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-30)
        ridge = torch.eye(A.shape[1], dtype=torch.float64, device=W.device) * eps[:, None, None]
        new = torch.linalg.solve(A + ridge, (b + eps[:, None] * old)[..., None])[..., 0]
        mu, alpha, scale = new.float().split(ng, 1)
        unit = None if q.unit is None else q.unit[rows]
        new = torch.cat([round_params(mu, unit), round_params(alpha, unit), round_params(scale, unit)], 1).double()

        def objective(p):                                      # pᵀAp − 2bᵀp: the layer objective minus a constant
            return (p[:, None, :] @ A @ p[:, :, None])[:, 0, 0] - 2 * (b * p).sum(1)
        keep = torch.where((objective(new) < objective(old))[:, None], new, old).float()
        q.mu[rows], q.alpha[rows], q.scale[rows] = keep.split(ng, 1)
    return dequantized(q, mask)


def quantize_linears(weights: list, stats: Stats, s: Settings) -> list[dict]:
    """Quantize linears that share one input (e.g. wq, wk, wv): stacked by rows they share H and every
    stage, which treats rows independently; PBAR's means are taken per linear. Returns one record each."""
    W = torch.cat(weights).float()                           # (Σ out, in)
    H = stats.hessian()
    dead = H.diag() == 0                                     # inputs never active: GPTQ's convention
    H[dead, dead] = 1
    W[:, dead] = 0
    delta = s.damp * H.diag().mean()
    H.diagonal().add_(delta)
    if s.fias == "target":                                   # FIAS: reproduce W·X_fp from X_q
        W = fias_target(W, H, stats.cross(), delta)
    U = inverse_cholesky(H)
    G = s.group_size
    # stage 1: every weight to mid_bits
    W_mid = W if s.mid_bits >= 16 else gptq(W, U, RowGroupQuantizer(W.shape, G, s.mid_bits, device=W.device), G)
    # stage 2: PBAR salience on W_mid, the k most salient weights of every row-group (means per linear)
    rows = [w.shape[0] for w in weights]
    if 0 < s.salient < 1:
        d, r = U.diag(), stats.ranges()
        choose = (lambda M: column_mask(M, s.salient, s.block_rows)) if s.structure == "columns" else \
            (lambda M: salient_mask(M, s.salient, G))
        mask = torch.cat([choose(pbar_salience(w, d, r, s.lam, G, s.pbar)) for w in W_mid.split(rows)])
    else:
        mask = torch.full(W.shape, s.salient == 1, dtype=torch.bool, device=W.device)
    # stage 3: salient weights to high_bits, the rest to μ ± α, errors compensated column by column
    unit = torch.cat([fp8_unit(w) for w in W_mid.split(rows)]) if s.scales == "fp8" else None
    colscale = None
    if s.column_scale and 0 < s.salient < 1:
        dtype = kernels.SCALE_DTYPES[s.scales]
        colscale = torch.cat([column_scales(w, m, G, dtype).expand(len(w), -1)
                              for w, m in zip(W_mid.split(rows), mask.split(rows))])
    quantizer = RowGroupQuantizer(W.shape, G, s.high_bits, mask, device=W.device, unit=unit, colscale=colscale)
    W_hat = gptq(W_mid if s.stage3_from == "mid" else W, U, quantizer, G, compensate=s.compensate)
    if s.refit:   # the codes are fixed now: μ, α, scale re-fitted to ‖W·X_fpᵀ − Ŵ·X_qᵀ‖² (W: the FIAS target)
        W_hat = refit(W, H, quantizer, mask, G)
    records, r0 = [], 0
    q = quantizer
    parts = dict(codes=q.codes, mask=mask, scale=q.scale, zero=q.zero, mu=q.mu, alpha=q.alpha)
    if unit is not None:
        parts["unit"] = unit
    if colscale is not None:
        parts["colscale"] = colscale
    for n in rows:
        sl = slice(r0, r0 + n)
        records.append(dict(weight=W_hat[sl], group_size=G, **{k: v[sl].cpu() for k, v in parts.items()}))
        r0 += n
    return records


def quantize_block(fp_block, xs_fp, xs_q, freqs_cis, s: Settings):
    """Quantize one block's linears step by step (STEPS), each from its own two-stream statistics.
    xs_fp, xs_q: the block's inputs, one tensor per chunk of calibration samples (the lists are emptied, so
    that memory holds each input only as long as the pass needs it). Returns the records by
    linear name, the next block's inputs in both streams, and the seconds spent per step."""
    q_block = copy.deepcopy(fp_block)
    inputs_fp, inputs_q = (list(xs_fp), list(xs_q)) if s.tune_steps else ([], [])   # tuning needs them again
    fp_runs = [block_steps(fp_block, x, freqs_cis) for x in xs_fp]
    q_runs = [block_steps(q_block, x, freqs_cis) for x in xs_q]
    xs_fp.clear(), xs_q.clear()   # consumed: the paused passes hold the inputs now, and drop them when they can
    errors = OutputErrors(fp_block, q_block)
    records, seconds = {}, {}
    for names in STEPS:
        stats = Stats(s.fias)
        for fp_run, q_run in zip(fp_runs, q_runs):   # full precision first: the hooks pair outputs per chunk
            a_fp = next(fp_run)
            stats.add(a_fp, next(q_run))
        t0 = time.time()
        linears = [q_block.get_submodule(name) for name in names]
        retries = len(DAMPING_RETRIES)
        try:
            recs = quantize_linears([lin.weight for lin in linears], stats, s)
        except QuantizationError as e:                          # name the linears; run() names the block
            raise QuantizationError(f"{' + '.join(names)}: {e}") from None
        for r in DAMPING_RETRIES[retries:]:
            r["linears"] = " + ".join(names)
        for name, lin, rec in zip(names, linears, recs):
            lin.weight.copy_(rec.pop("weight"))
            records[name] = rec
        seconds[names] = time.time() - t0
    outs = [(next(fp_run), next(q_run)) for fp_run, q_run in zip(fp_runs, q_runs)]
    errors.remove()
    ys_fp, ys_q = [o[0] for o in outs], [o[1] for o in outs]
    if s.tune_steps:   # block-wise tuning of the continuous parameters, then both streams again
        t0 = time.time()
        tune_block(q_block, records, inputs_q, ys_fp, freqs_cis, s.tune_steps)
        errors, ys_q = OutputErrors(fp_block, q_block), []
        for x_fp, x_q in zip(inputs_fp, inputs_q):             # full precision first: the hooks pair outputs
            fp_block(x_fp, freqs_cis)
            ys_q.append(q_block(x_q, freqs_cis))
        errors.remove()
        seconds[STEPS[-1]] += time.time() - t0                 # reported with the block's last step
    for name in records:
        records[name]["rel_error"] = errors.relative(name)
    return records, ys_fp, ys_q, seconds


TUNE_LR = 1e-2        # Adam's step on each parameter's relative change
TUNE_SAMPLES = 4      # calibration windows per tuning step


def record_weight(rec: dict, delta=None):
    """Ŵ (out, in) of a quantized linear from its record: the arithmetic of kernels.dequantize, differentiable
    in the relative changes `delta` (3, out, ng) of its μ, α and scale when given."""
    out, n = rec["codes"].shape
    col_group = torch.arange(n, device=rec["mask"].device) // rec["group_size"]
    mu, alpha, scale = rec["mu"], rec["alpha"], rec["scale"]
    if delta is not None:
        mu, alpha, scale = mu * (1 + delta[0]), alpha * (1 + delta[1]), scale * (1 + delta[2])
    codes = rec["codes"].float()
    mu, alpha = mu[:, col_group], alpha[:, col_group]
    ac = alpha * rec["colscale"] if "colscale" in rec else alpha
    binary = torch.where(codes == 1, mu + ac, mu - ac)
    return torch.where(rec["mask"], scale[:, col_group] * (codes - rec["zero"][:, col_group]), binary)


def tune_block(q_block, records: dict, xs_q: list, ys_fp: list, freqs_cis, steps: int):
    """FIAS's target at the level of a block (PTQ1.61's learned scales): with every code fixed, `steps`
    Adam steps on the relative change of each μ, α and scale of the block's linears, so that the quantized
    block on X_q reproduces the full-precision block's output Y_fp (mean squared error, TUNE_SAMPLES
    windows a step, a seeded draw). The tuned parameters are rounded to their stored precision; the block
    keeps its old ones if the rounded result is worse on a fixed set of windows."""
    x, y = torch.cat(xs_q), torch.cat(ys_fp)                     # (nsamples, T, dim)
    names = list(records)
    deltas = {n: torch.zeros(3, *records[n]["mu"].shape, requires_grad=True) for n in names}
    opt = torch.optim.Adam(list(deltas.values()), lr=TUNE_LR)
    gen = torch.Generator().manual_seed(0)
    check = torch.arange(min(len(x), TUNE_SAMPLES))

    def loss(weights, idx):
        out = torch.func.functional_call(q_block, weights, (x[idx], freqs_cis))
        return (out - y[idx]).pow(2).mean()
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randperm(len(x), generator=gen)[:TUNE_SAMPLES]
            value = loss({f"{n}.weight": record_weight(records[n], deltas[n]) for n in names}, idx)
            opt.zero_grad()
            value.backward()
            opt.step()
    before = loss({f"{n}.weight": record_weight(records[n]) for n in names}, check)
    tuned = {}
    for n in names:
        rec, d = records[n], deltas[n].detach()
        unit = rec["unit"][:, None] if "unit" in rec else None
        tuned[n] = dict(rec, **{k: round_params(rec[k] * (1 + d[i]), unit, positive=k == "scale")
                                for i, k in enumerate(("mu", "alpha", "scale"))})
    if loss({f"{n}.weight": record_weight(tuned[n]) for n in names}, check) < before:
        for n in names:
            records[n].update(mu=tuned[n]["mu"], alpha=tuned[n]["alpha"], scale=tuned[n]["scale"])
    for n in names:
        q_block.get_submodule(n).weight.copy_(record_weight(records[n]))


# -----------------------------------------------------------------------------
# 5. Packing (kernels.py reads it back)

def pack_bits(values, nbits: int):
    """(rows, count) integers < 2^nbits -> (rows, ceil(count·nbits/8)) uint8, least significant bit first."""
    rows, count = values.shape
    bits = (values.to(torch.int32)[..., None] >> torch.arange(nbits, dtype=torch.int32)) & 1
    bits = bits.reshape(rows, count * nbits)
    nbytes = kernels.bit_bytes(count, nbits)
    bits = torch.nn.functional.pad(bits, (0, nbytes * 8 - count * nbits))
    return (bits.reshape(rows, nbytes, 8) << torch.arange(8, dtype=torch.int32)).sum(-1).to(torch.uint8)


def pack_trits(states):
    """(rows, count) values in {0, 1, 2} -> (rows, ceil(count/5)) uint8, five base-3 digits per byte."""
    rows, count = states.shape
    nbytes = kernels.trit_bytes(count)
    states = torch.nn.functional.pad(states.to(torch.int32), (0, nbytes * 5 - count))
    powers = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
    return (states.reshape(rows, nbytes, 5) * powers).sum(-1).to(torch.uint8)


def pack_columns(rec: dict, s: Settings) -> tuple[dict, dict]:
    """pack_linear for the columns layout (version 2): per-block column bitmaps, each row's binary signs
    and salient codes in column order, and its parameters in fp16 or fp8 (zeros in high_bits bits)."""
    codes, mask = rec["codes"], rec["mask"]
    out, n = codes.shape
    R = min(s.block_rows or out, out)
    k = int(mask[0].sum())
    first = mask[::R]                                            # (blocks, in): each block's first row
    assert torch.equal(first.repeat_interleave(R, 0)[:out], mask), "rows of a block share their salient columns"
    spec = dict(shape=[out, n], group_size=s.group_size, high_bits=s.high_bits, layout=kernels.COLUMNS,
                block_rows=R, k=k, scales=s.scales)
    if s.scales == "fp8":
        unit = rec["unit"]
        assert bool((unit == unit[0]).all()), "one power of two per linear"
        spec["unit_exp"] = int(round(math.log2(float(unit[0]))))
    dtype = kernels.SCALE_DTYPES[s.scales]
    scale_unit = 2.0 ** spec.get("unit_exp", 0) if s.scales == "fp8" else 1.0

    def stored(p):                                               # already rounded: the cast is exact
        t = (p / scale_unit).to(dtype)
        assert torch.equal(t.float() * scale_unit, p), "parameters hold their stored precision"
        return t
    tensors = dict(columns=pack_bits(first.to(torch.int32), 1),
                   signs=pack_bits(codes[~mask].reshape(out, n - k), 1),
                   high=pack_bits(codes[mask].reshape(out, k), s.high_bits),
                   binary=stored(torch.stack([rec["mu"], rec["alpha"]], -1)),
                   scale=stored(rec["scale"]),
                   zero=pack_bits(rec["zero"].to(torch.int32), s.high_bits))
    if s.column_scale:
        spec["column_scale"] = True
        c = rec["colscale"][0]
        assert bool((rec["colscale"] == c).all()), "one column scale per input column"
        tensors["colscale"] = c.to(dtype)
        assert torch.equal(tensors["colscale"].float(), c)
    for name, (shape, dt) in kernels.expected_columns_shapes(spec).items():
        assert tuple(tensors[name].shape) == shape and tensors[name].dtype == dt, f"{name}: size mismatch"
    return tensors, spec


def pack_linear(rec: dict, s: Settings) -> tuple[dict, dict]:
    """One quantized linear's record -> (its packed tensors by short name, its spec)."""
    if layout_of(s) == kernels.COLUMNS:
        return pack_columns(rec, s)
    codes, mask = rec["codes"], rec["mask"]
    out, n = codes.shape
    widths = kernels.group_widths(n, s.group_size)
    layout = layout_of(s)
    ks = [0 if layout == "signs" else w if layout == "grid" else salient_count(w, s.salient) for w in widths]
    spec = dict(shape=[out, n], group_size=s.group_size, high_bits=s.high_bits, layout=layout, k=ks)
    states, high = [], []
    for g, (w, k) in enumerate(zip(widths, ks)):
        c, m = codes[:, g * s.group_size:g * s.group_size + w], mask[:, g * s.group_size:g * s.group_size + w]
        assert int(m.sum()) == out * k, "every row-group holds exactly k salient weights"
        if layout == "trits":
            states.append(pack_trits(torch.where(m, 2, c.to(torch.int32))))
        elif layout == "signs":
            states.append(pack_bits(c, 1))
        if layout != "signs" and k:
            high.append(pack_bits(c[m].reshape(out, k), s.high_bits))
    tensors = {}
    if layout != "grid":
        tensors[layout] = torch.cat(states, 1)
        tensors["binary"] = torch.stack([rec["mu"], rec["alpha"]], -1).half()
    if layout != "signs":
        tensors["high"] = torch.cat(high, 1) if high else torch.zeros(out, 0, dtype=torch.uint8)
        tensors["scale"], tensors["zero"] = rec["scale"].half(), rec["zero"].to(torch.uint8)
    for name, (shape, dtype) in kernels.expected_shapes(spec).items():
        assert tuple(tensors[name].shape) == shape and tensors[name].dtype == dtype, f"{name}: size mismatch"
    return tensors, spec


def salient_per_row(spec: dict) -> int:
    return spec["k"] if spec["layout"] == kernels.COLUMNS else sum(spec["k"])


def linear_bits(tensors: dict, spec: dict) -> dict:
    """Bits per weight of one packed linear, from its tensors' bytes: payload (the paper's count: 1 per
    binary weight, high_bits per salient one), scales (μ, α, scale, zero, column scales), index (the rest:
    which weights are salient, and byte padding), total."""
    out, n = spec["shape"]
    n_salient = out * salient_per_row(spec)
    payload = (out * n - n_salient) + n_salient * spec["high_bits"]
    scales = 8 * sum(tensors[k].numel() * tensors[k].element_size()
                     for k in ("binary", "scale", "zero", "colscale") if k in tensors)
    total = 8 * sum(t.numel() * t.element_size() for t in tensors.values())
    return {"payload": payload / (out * n), "index": (total - payload - scales) / (out * n),
            "scales": scales / (out * n), "total": total / (out * n), "bytes": total // 8}


def checksums(tensors: dict) -> dict:
    """The metadata's record of every tensor's bytes (kernels.CHECKSUM), which the loader checks: any tensor
    of any layout, so that a flipped bit anywhere in the file is found and named."""
    return dict(algorithm=kernels.CHECKSUM, tensors={n: kernels.tensor_checksum(t) for n, t in sorted(tensors.items())})


def safe_cholesky(H, upper: bool = False):
    """torch.linalg.cholesky, for a Hessian that may be degenerate (collinear inputs, too little damping): a
    factorisation that fails is retried with 10×, 100× and 1000× DAMP · mean(diag H) added to the diagonal,
    and each retry is recorded in DAMPING_RETRIES (the report lists them). A Hessian with NaN or Inf
    entries, or one no retry rescues, is a QuantizationError (main names the layer)."""
    if not torch.isfinite(H).all():
        raise QuantizationError("the calibration statistics hold NaN or Inf (the activations overflowed)")
    L, info = torch.linalg.cholesky_ex(H, upper=upper)
    if info == 0:
        return L
    base = H.diagonal().mean().abs().item()
    for factor in (10, 100, 1000):
        extra = factor * DAMP * base
        L, info = torch.linalg.cholesky_ex(H + extra * torch.eye(H.shape[0], dtype=H.dtype, device=H.device),
                                           upper=upper)
        if info == 0:
            DAMPING_RETRIES.append(dict(size=H.shape[0], factor=factor, added=extra))
            return L
    raise QuantizationError(f"the {H.shape[0]}x{H.shape[0]} Hessian is not positive definite, even with "
                            f"1000x the damping added")


class QuantizationError(ValueError):
    """The numbers of a layer cannot be quantized (NaN or Inf, a Hessian beyond damping): one line."""


DAMPING_RETRIES = []  # safe_cholesky's retries in this process, in order: main() empties it and reports them


# -----------------------------------------------------------------------------
# The pipeline

@dataclass
class Calibration:
    nsamples: int
    seqlen: int
    seed: int = 0


def default_calibration(args: llama.ModelArgs) -> Calibration:
    """GPTQ's 128 × 2048 for real models; for small ones (the embedded 135M on 2 CPU cores) fewer tokens,
    so that a run takes minutes: quantization time grows with the calibration tokens times the model size."""
    per_block = 4 * args.dim * args.dim + 3 * args.dim * args.hidden_dim
    if per_block * args.n_layers < 1e9:
        return Calibration(nsamples=32, seqlen=512)
    return Calibration(nsamples=128, seqlen=2048)


def quantize_model(model, tokens, s: Settings, device="cpu", log=print):
    """Quantize every block linear of `model` from calibration `tokens` (LongTensor [nsamples, seqlen]).
    Only the current block and the two streams' activations live on `device`. Returns the packed tensors
    and specs by linear name, and the per-linear report."""
    args = model.args
    freqs = llama.precompute_freqs_cis(args.dim // args.n_heads, tokens.shape[1], args.rope_theta, device)
    chunk = max(1, CHUNK_TOKENS // tokens.shape[1])
    with torch.no_grad():
        xs_fp = [model.tok_embeddings(t).to(device=device, dtype=torch.float32) for t in tokens.split(chunk)]
        xs_q = xs_fp                                # the streams agree until the first block is quantized
        packed, specs, report = {}, {}, []
        t_start = time.time()
        for i, layer in enumerate(model.layers):
            t0 = time.time()
            fp_block = copy.deepcopy(layer).to(device=device, dtype=torch.float32)
            records, xs_fp, xs_q, seconds = quantize_block(fp_block, xs_fp, xs_q, freqs, s)
            for names, sec in seconds.items():
                for name in names:
                    prefix = f"layers.{i}.{name}"
                    packed[prefix], specs[prefix] = pack_linear(records[name], s)
                    bits = linear_bits(packed[prefix], specs[prefix])
                    report.append(dict(name=prefix, shape=specs[prefix]["shape"],
                                       salient=salient_per_row(specs[prefix]) / specs[prefix]["shape"][1],
                                       bits={k: round(v, 4) for k, v in bits.items() if k != "bytes"},
                                       bytes=bits["bytes"], rel_error=round(records[name]["rel_error"], 5),
                                       seconds=round(sec, 3), group="+".join(n.split(".")[-1] for n in names)))
            del fp_block
            done = time.time() - t_start
            errs = ", ".join(f"{r['name'].split('.')[-1]} {r['rel_error']:.3f}" for r in report[-7:])
            eta = done / (i + 1) * (args.n_layers - i - 1)
            log(f"block {i + 1}/{args.n_layers} in {time.time() - t0:.1f} s (ETA {eta:.0f} s); "
                f"relative output error {errs}")
    return packed, specs, report


def save_packed(path: Path, model, packed: dict, specs: dict, info: dict):
    """The packed file: quantized linears as packed integer tensors, everything else as fp16."""
    tensors = {}
    for name, t in model.state_dict().items():
        prefix = name.removesuffix(".weight")
        if prefix in packed or (name == "output.weight" and model.args.tie_embeddings):
            continue
        t16 = t.to(torch.float16)
        if not torch.isfinite(t16).all():
            raise SettingsError(f"{name}: values beyond float16's range")
        tensors[name] = t16.contiguous()
    for prefix, parts in packed.items():
        for k, t in parts.items():
            tensors[f"{prefix}.{k}"] = t.contiguous()
    version = 2 if any(spec["layout"] == kernels.COLUMNS for spec in specs.values()) else 1   # v1 files as before
    meta = dict(format=kernels.FORMAT, version=version, config=asdict(model.args), linears=specs,
                checksums=checksums(tensors), **info)
    cli.write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={kernels.FORMAT: json.dumps(meta, sort_keys=True)}))


def summarize(report: list, file_bytes: int, n_params: int) -> dict:
    """Whole-model totals: bits per linear weight (weighted by size) and the file against its 16-bit size."""
    weights = [r["shape"][0] * r["shape"][1] for r in report]
    total_w = sum(weights)
    mean = {k: sum(w * r["bits"][k] for w, r in zip(weights, report)) / total_w
            for k in ("payload", "index", "scales")}
    mean["total"] = 8 * sum(r["bytes"] for r in report) / total_w           # exact: from the bytes
    return dict(linear_weights=total_w, bits_per_linear_weight={k: round(v, 4) for k, v in mean.items()},
                file_bytes=file_bytes, fp16_bytes=2 * n_params, compression=round(2 * n_params / file_bytes, 3),
                rel_error_mean=round(sum(r["rel_error"] for r in report) / len(report), 5))


def print_report(report: list, totals: dict, out=sys.stdout):
    print(f"{'linear':32s} {'shape':>11s} {'salient':>7s} {'payload':>7s} {'index':>6s} {'scales':>6s} "
          f"{'total':>6s} {'rel err':>8s} {'s':>6s}", file=out)
    for r in report:
        b = r["bits"]
        print(f"{r['name']:32s} {r['shape'][0]:>5d}x{r['shape'][1]:<5d} {r['salient']:7.3f} {b['payload']:7.3f} "
              f"{b['index']:6.3f} {b['scales']:6.3f} {b['total']:6.3f} {r['rel_error']:8.4f} {r['seconds']:6.2f}"
              f" ({r['group']})", file=out)
    b = totals["bits_per_linear_weight"]
    print(f"bits per linear weight: payload {b['payload']:.3f} + index {b['index']:.3f} + scales "
          f"{b['scales']:.3f} = {b['total']:.3f} (from the packed bytes)", file=out)
    print(f"file {totals['file_bytes'] / 2**20:.1f} MiB against {totals['fp16_bytes'] / 2**20:.1f} MiB at 16 bits "
          f"({totals['compression']:.2f}x smaller)", file=out)


# -----------------------------------------------------------------------------
# Command line

SYNTHETIC = {  # real shapes, random weights: times the pipeline at scale without downloading anything
    "llama2-7b": llama.ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, hidden_dim=11008),
    "llama2-13b": llama.ModelArgs(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, hidden_dim=13824),
    "llama2-70b": llama.ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                                  hidden_dim=28672),
}


def synthetic_model(name: str, blocks: int, seed: int):
    """`blocks` transformer blocks of a model's real shapes, weights ~ N(0, 0.02²), norms 1."""
    args = replace(SYNTHETIC[name], n_layers=blocks)
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in llama.Transformer(args).state_dict().items()}
    tensors = {n: (lambda shape=shape, n=n: torch.ones(shape) if n.endswith("norm.weight")
                   else torch.randn(shape, generator=gen) * 0.02) for n, shape in shapes.items()}
    return llama.build_model(args, tensors, Path(f"synthetic {name}"))


def settings_from_args(a) -> Settings:
    if a.preset not in PRESETS:
        raise SettingsError(f"--preset {a.preset}: unknown; choose one of {', '.join(PRESETS)}")
    if a.salient is not None and not 0 < a.salient <= 1:
        raise SettingsError(f"--salient {a.salient}: must be in (0, 1]")
    s = PRESETS[a.preset]
    overrides = {f.name: getattr(a, f.name) for f in fields(Settings) if getattr(a, f.name, None) is not None}
    if a.no_pbar:
        overrides["pbar"] = False
    s = replace(s, **overrides)
    check_settings(s)
    return s


def stem(ckpt: Path) -> str:
    name = ckpt.name if ckpt.is_dir() else ckpt.name.split(".")[0]
    return name or "model"


def parse_args(argv=None):
    p = cli.Parser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint directory, .gguf, or name (default: embedded SmolLM2)")
    p.add_argument("--synthetic", default=None, choices=SYNTHETIC, help="random weights of this model's shapes")
    p.add_argument("--blocks", type=int, default=2, help="--synthetic: how many blocks to build and time")
    p.add_argument("--preset", default="squeeze10", help=f"one of {', '.join(PRESETS)} (default squeeze10)")
    p.add_argument("--mid-bits", dest="mid_bits", type=int, default=None, help="stage 1 bits, 2..16 (16: none)")
    p.add_argument("--salient", type=float, default=None, help="fraction kept at --high-bits, in (0, 1]")
    p.add_argument("--high-bits", dest="high_bits", type=int, default=None, help="salient weights' bits, 2..8")
    p.add_argument("--lam", type=float, default=None, help=f"PBAR's λ on the normalised terms (default {LAM})")
    p.add_argument("--no-pbar", dest="no_pbar", action="store_true", help="Hessian-only salience (M = V)")
    p.add_argument("--fias", default=None, help="target (default) | input | off")
    p.add_argument("--stage3-from", dest="stage3_from", default=None,
                   help="mid (default: stage 3 re-quantizes W_mid) | fp (stage 3 quantizes W; stage 1 only ranks)")
    p.add_argument("--structure", default=None, help="groups (version 1: k salient per row-group) | columns "
                   "(version 2: salient input columns shared by --block-rows rows)")
    p.add_argument("--block-rows", dest="block_rows", type=int, default=None,
                   help="columns: rows sharing one choice of salient columns (0: the whole layer)")
    p.add_argument("--scales", default=None, help="fp16 | fp8 (columns only: μ, α, scale as float8 e4m3)")
    p.add_argument("--refit", dest="refit", action="store_true", default=None,
                   help="re-fit μ, α, scale to the layer objective once the codes are fixed")
    p.add_argument("--no-refit", dest="refit", action="store_false", help="keep GPTQ's parameters")
    p.add_argument("--column-scale", dest="column_scale", action="store_true", default=None,
                   help="columns: binary weights μ ± α·c_j with one c per input column (ARB-LLM's RC)")
    p.add_argument("--no-column-scale", dest="column_scale", action="store_false", help="binary weights μ ± α")
    p.add_argument("--tune-steps", dest="tune_steps", type=int, default=None,
                   help="block-wise tuning: Adam steps on μ, α, scale against the fp block's output (default 0)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default: by model size)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--calib", nargs="+", default=["embedded"], metavar="SOURCE",
                   help="embedded (default: the embedded c4.utf8) | c4 PATH | wikitext2 PATH | text PATH")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: the checkpoint's own)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="packed file (default out/NAME.PRESET.safetensors)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with the report")
    return p.parse_args(argv)


def prepare(a):
    """Check every argument, load the model and tokenize the calibration set: everything that can fail on
    bad input fails here, before any quantization. Returns the model, tokens, settings and file facts."""
    s = settings_from_args(a)
    if cli.check_device(a.device):
        raise SettingsError(cli.check_device(a.device))
    if cli.check_seed(a.seed):
        raise SettingsError(cli.check_seed(a.seed))
    for flag, least in (("nsamples", 1), ("seqlen", 2), ("blocks", 1)):
        if getattr(a, flag) is not None and getattr(a, flag) < least:
            raise SettingsError(f"--{flag} {getattr(a, flag)}: must be at least {least}")
    source, *rest = a.calib
    if (source == "embedded") != (not rest) or len(rest) > 1:
        raise SettingsError(f"--calib {' '.join(a.calib)}: expected 'embedded' or 'c4|wikitext2|text PATH'")
    ckpt = None if a.synthetic else llama.resolve_checkpoint(a.ckpt)
    if ckpt is not None and llama.checkpoint_format(ckpt) == "squeeze10":
        raise SettingsError(f"{ckpt}: already a packed squeeze10 file; quantize the full-precision checkpoint")
    name = f"{a.synthetic}-synthetic-{a.blocks}blocks" if a.synthetic else stem(ckpt)
    out = Path(a.out) if a.out else Path("out") / f"{name}.{a.preset}.safetensors"
    if not a.out:
        out.parent.mkdir(exist_ok=True)
    out = cli.check_writable(out, cli.input_files(ckpt, a.tokenizer, rest[0] if rest else None))
    if a.synthetic:
        model = synthetic_model(a.synthetic, a.blocks, a.seed)
    else:  # bf16 keeps a 7B model in 13 GB; each block is quantized in fp32 on the device
        model = llama.load_checkpoint(ckpt, dtype=torch.float32 if ckpt.suffix == ".gguf" else torch.bfloat16)
    cal = default_calibration(SYNTHETIC[a.synthetic] if a.synthetic else model.args)
    cal = Calibration(a.nsamples or cal.nsamples, a.seqlen or cal.seqlen, a.seed)
    if cal.seqlen > model.args.max_seq_len:   # positions the model never saw: its activations mean nothing
        raise SettingsError(f"--seqlen {cal.seqlen}: longer than the model's context of {model.args.max_seq_len} "
                            "tokens (its config's context length)")
    if a.synthetic:
        gen = torch.Generator().manual_seed(a.seed)
        tokens = torch.randint(model.args.vocab_size, (cal.nsamples, cal.seqlen), generator=gen)
        tokenizer_ref = None
    else:
        tokenizer_ref = str(Path(a.tokenizer or ckpt).resolve()) if a.tokenizer or a.ckpt else "embedded"
        tokenizer = data.load_tokenizer(ckpt if tokenizer_ref == "embedded" else tokenizer_ref)
        tokens = data.calibration_set(tokenizer, source, rest[0] if rest else None, cal.nsamples, cal.seqlen,
                                      cal.seed)
        if tokens.max() >= model.args.vocab_size:
            raise SettingsError(f"{tokenizer_ref}: the tokenizer produces id {int(tokens.max())}, but the model "
                                f"has {model.args.vocab_size} tokens")
    info = dict(preset=a.preset, settings=asdict(s), calibration=asdict(cal),
                calib_source="random ids" if a.synthetic else " ".join(map(str, a.calib)),
                source=a.synthetic or ("embedded" if a.ckpt is None else str(ckpt.resolve())),
                tokenizer=tokenizer_ref)
    return model, tokens, s, name, out, info


def input_files(*paths) -> list[Path]:
    """Every file a run reads (a directory: the files in it), which --out must not be."""
    files = []
    for p in paths:
        if p is not None and Path(p).is_dir():
            files += [f for f in Path(p).iterdir() if f.is_file()]
        elif p is not None and Path(p).exists():
            files.append(Path(p))
    return files


def main(argv=None):
    """The command line. SIGINT and SIGTERM end it with one line and exit code 130 / 143, and no partial file."""
    a = parse_args(argv)
    try:
        with cli.interruptible():
            return run(a)
    except cli.Interrupted as e:
        print(f"error: interrupted by {e}; no partial file is left", file=sys.stderr)
        return 128 + e.signum


def run(a) -> int:
    t_start = time.time()
    try:
        model, tokens, s, name, out, info = prepare(a)
    except (SettingsError, cli.OutputError, llama.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    blocks_done = 0
    DAMPING_RETRIES.clear()

    def log(msg):
        nonlocal blocks_done
        if msg.startswith("block "):     # quantize_model reports each block when it is done
            for r in DAMPING_RETRIES:
                r.setdefault("layer", f"layers.{blocks_done}")
            blocks_done += 1
        print(msg, file=sys.stderr, flush=True)
    log(f"{name}: {llama.num_params(model) / 1e6:.1f}M parameters, {model.args.n_layers} blocks; "
        f"preset {a.preset}: " + ", ".join(f"{k}={v}" for k, v in asdict(s).items()))
    log(f"calibration: {tokens.shape[0]} x {tokens.shape[1]} tokens from {info['calib_source']}, seed {a.seed}; "
        f"device {a.device}; writing {out}")
    t_quant = time.time()
    try:
        packed, specs, report = quantize_model(model, tokens, s, a.device, log)
    except QuantizationError as e:
        print(f"error: layers.{blocks_done} (block {blocks_done + 1}): {e}; no file written", file=sys.stderr)
        return 2
    quant_seconds = time.time() - t_quant
    info["report"] = [{k: v for k, v in r.items() if k != "seconds"} for r in report]  # no timings: same bytes
    if DAMPING_RETRIES:
        info["damping_retries"] = list(DAMPING_RETRIES)
        for r in DAMPING_RETRIES:
            log(f"{r['layer']} ({r.get('linears', '?')}): a Hessian ({r['size']} inputs) needed {r['factor']}x "
                "the damping to factorise")
    try:
        save_packed(out, model, packed, specs, info)
    except cli.WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SettingsError as e:
        print(f"error: {out}: {e}", file=sys.stderr)
        return 2

    totals = summarize(report, out.stat().st_size, llama.num_params(model))
    totals.update(quantize_seconds=round(quant_seconds, 1), wall_seconds=round(time.time() - t_start, 1),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if a.device.startswith("cuda"):
        totals["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if a.synthetic:
        full = SYNTHETIC[a.synthetic].n_layers
        totals["extrapolated_seconds"] = round(quant_seconds / a.blocks * full, 1)
        log(f"quantization {quant_seconds:.1f} s for {a.blocks} blocks; extrapolated to {full} blocks: "
            f"{totals['extrapolated_seconds']:.0f} s")
    print_report(report, totals)
    for r in info.get("damping_retries", []):
        print(f"damping: {r['layer']}, a {r['size']}-input Hessian factorised only with {r['factor']}x DAMP "
              f"({r['added']:.3g} added to its diagonal)")
    print(f"wrote {out} in {totals['wall_seconds']:.1f} s (quantization {quant_seconds:.1f} s), "
          f"peak RSS {totals['peak_rss_mb'] / 1024:.2f} GiB")
    if a.json:
        print(json.dumps(dict(out=str(out), preset=a.preset, settings=asdict(s), calibration=info["calibration"],
                              totals=totals, layers=report, damping_retries=info.get("damping_retries", []))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
