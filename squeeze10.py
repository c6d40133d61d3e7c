"""squeeze10.py — Squeeze10-LLM (Zhu et al. 2025, arXiv 2507.18073): LLaMA weights at ~1.6 bits, really packed.

    python squeeze10.py                                # the embedded SmolLM2-135M, preset squeeze10
    python squeeze10.py --preset paper                 # the paper's own format (version 1)
    python squeeze10.py --ckpt llama2-7b --calib c4 ~/data/c4 --device cuda
    python eval.py --ckpt out/SmolLM2-135M-Instruct.squeeze10.safetensors

Every linear layer of every transformer block becomes a mix of 1-bit and 4-bit weights: 80% binarized, the
20% most salient kept on a 4-bit grid. Two formats (presets) hold them:
- `squeeze10` (the default, format version 2, ~1.9 true bits per weight): the salient weights are whole input
  columns shared by blocks of 32 rows, μ, α and the grid scales are float8, and the binary weights carry one
  scale per input column (ARB-LLM's "RC"); no 4-bit stage (it measured worse). The same 1.6-bit payload is
  spent as 30 % at 3 bits (not 20 % at 4) on a clipped grid, calibrated on 128 windows, and GPTQ's result is
  refined on its own objective (ARB-LLM's alternation of codes and parameters): chosen on a validation set
  (README, "Choosing the default"). ../shared/METHOD.md "Version 2" and the README measure every choice.
- `paper` (format version 1, 2.917 bits): the paper as METHOD.md reads it, each row-group choosing its own
  26 salient weights, fp16 parameters, the staged 4-bit step.
kernels.py draws both packed layouts as C structs and reads them back.

The file reads in the order the method runs, one section per stage:

1. Calibration and FIAS ("Full Information Activation Supervision"). Two activation streams run through the
   calibration set, one block at a time: X_fp, the full-precision model's own activations, and X_q, those
   of the model quantized so far. Each group of linears sharing an input is quantized so that its output on
   the inputs it will really see reproduces the full-precision output: min ‖W·X_fpᵀ − Ŵ·X_qᵀ‖². That is
   ordinary GPTQ on the re-fitted target W* = W·(C + δI)·(H̃ + δI)⁻¹ (`fias_target`), so errors stop
   compounding from block to block. `--fias input` and `--fias off` are the other two readings.
2. Stage 1, staged quantization: GPTQ of the whole layer to `mid_bits` (4) gives W_mid (`gptq`); the
   quantizer is three stateless functions (`fit_grid`, `fit_binary`, `quantize_column`).
3. PBAR ("Post-Binarization Activation Robustness"): salience M = V/mean V + λ·B/mean B, with V the
   Hessian term (the OBS loss of removing a weight) and B = |binarization error|·(input channel range), a
   bound on how far binarizing that weight widens its output channel's range (`pbar_salience`).
4. Stage 3: in every row-group the k = round(0.2·width) weights of largest M stay at 4 bits (version 2:
   the K = round(0.3·in) columns of largest M summed over a block's rows at 3 bits, `column_mask`), the rest become
   μ ± α (version 2: μ ± α·c_j, `column_scales`), and a second GPTQ pass over W_mid compensates the error
   column by column (`quantize_linears`). Version 2 then refines that pass's result on its own objective,
   ARB-LLM's alternation: codes by coordinate descent, μ, α and scales by least squares (`refine`).
5. Packing into a safetensors file whose size proves its bits (`pack`, with kernels.pack_*).
6. The report: bits from the file's bytes, output error against the full-precision layer, time.

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
- The grid's range: GPTQ's min–max (version 1, as the paper), or per row the shrunk range that rounds the
  salient weights with the least squared error (`--clip`, the default's: it pays at 3 bits, not at 4).
- Grid and binary parameters are rounded to their stored precision (fp16, or fp8 in units of a power of
  two) before the weights are rounded onto them, so the packed file reproduces the quantizer's output bit
  for bit and GPTQ compensates the parameters' rounding too.

What a reader can skip (the command line's checks and safe writes, the reproduction, timings) is in tools/.
"""
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

import kernels
import model

GROUP_SIZE = 128      # input columns per row-group (METHOD.md's G)
DAMP = 0.01           # δ = DAMP · mean(diag H)
CHUNK_TOKENS = 8192   # calibration tokens pushed through a block at once (bounds the transient memory)
FP8_MAX = 448.0       # float8 e4m3's largest value

STEPS = (  # a block's linears, grouped by shared input, in the order the forward pass reaches them
    ("attention.wq", "attention.wk", "attention.wv"),
    ("attention.wo",),
    ("feed_forward.w1", "feed_forward.w3"),
    ("feed_forward.w2",),
)


# -----------------------------------------------------------------------------
# Settings: the default preset's values, and the other presets as named differences

@dataclass(frozen=True)
class Settings:
    """The defaults are the default preset `squeeze10` (format version 2, ~1.9 bits), chosen on the validation
    set (README, "Choosing the default")."""
    salient: float = 0.3       # fraction kept on the high grid (0: all binary, 1: no binary part)
    high_bits: int = 3         # the salient weights' grid (30 % at 3 bits measured better than 20 % at 4)
    mid_bits: int | None = None  # stage 1's grid; None: no stage 1 (W_mid = W; the staged step measured worse)
    lam: float = 1.0           # PBAR: M = V/mean V + lam · B/mean B (chosen by the sweep in the README)
    pbar: bool = True          # False: M = V (Hessian-only salience, PB-LLM/BiLLM)
    fias: str = "target"       # target | input | off
    compensate: bool = True    # GPTQ error feedback (False: round to nearest)
    stage3_from: str = "mid"   # stage 3 quantizes W_mid (METHOD.md), or "fp": W itself, stage 1 only ranks
    structure: str = "columns"  # columns (v2: K salient columns per block_rows rows) | groups (v1: k per row-group)
    block_rows: int | None = 32  # columns: rows that share one choice of salient columns; None: the whole layer
    scales: str = "fp8"        # fp8: μ, α, scale as float8 e4m3 × a power of two per linear | fp16 (version 1)
    column_scale: bool = True  # columns: binary weights μ ± α·c_j, one c per input column (ARB-LLM's RC)
    clip: bool = True          # the salient grid's range by a clip search (fit_grid; else min–max)
    refine: int = 2            # rounds of alternating refinement after stage 3 (`refine`; 0: GPTQ's result)
    nsamples: int | None = 128  # calibration windows (GPTQ's 128); None: by model size (tools/cli.py)
    group_size: int = GROUP_SIZE
    damp: float = DAMP


VERSION1 = dict(structure="groups", block_rows=None, scales="fp16", column_scale=False, clip=False, refine=0,
                nsamples=None)
BASELINE = dict(VERSION1, pbar=False, fias="off")
PRESETS = {  # METHOD.md's table: baselines are presets of the same pipeline
    "squeeze10": Settings(),                                       # the default (README: "Version 2")
    "paper": Settings(salient=0.2, high_bits=4, mid_bits=4, **VERSION1),   # the paper-faithful format, 2.917 bits
    "pbllm": Settings(salient=0.1, high_bits=8, **BASELINE),       # PB-LLM: 10 % at 8 bits
    "gptq2": Settings(salient=1.0, high_bits=2, **BASELINE),
    "gptq3": Settings(salient=1.0, high_bits=3, **BASELINE),
    "gptq4": Settings(salient=1.0, high_bits=4, **BASELINE),
    "xnor": Settings(salient=0.0, high_bits=4, compensate=False, **BASELINE),   # all binary, round to nearest
}


class SettingsError(ValueError):
    """Bad settings or arguments: a one-line message."""


def layout_of(s: Settings) -> str:
    """The packed layout (kernels.py): all binary, all on the grid, or mixed in one of the two structures."""
    if s.salient == 0 or s.salient == 1:
        return "signs" if s.salient == 0 else "grid"
    return kernels.COLUMNS if s.structure == "columns" else "trits"


# -----------------------------------------------------------------------------
# 1. Calibration and FIAS: two activation streams, one block at a time

@dataclass
class Activations:
    """Where the two streams' activations wait between uses, and in what dtype: float32 (exact; the embedded
    model), or 16 bits, half the memory (float16 by default: 3 more mantissa bits than bfloat16, and LLaMA's
    largest activations, a few thousand, are far below its 65504; an overflow is an error), on `held_on` (the
    device, or the CPU: --offload). Every computation runs in float32 on `device`, as the statistics do."""
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    held_on: str = "cpu"

    def keep(self, t):
        kept = t.to(device=self.held_on, dtype=self.dtype)
        if self.dtype == torch.float16 and not torch.isfinite(kept).all() and torch.isfinite(t).all():
            raise QuantizationError("the activations overflow float16; use --act-dtype bf16 or fp32")
        return kept

    def use(self, t):
        return t.to(device=self.device, dtype=torch.float32)


def block_steps(block, x, freqs_cis, acts: Activations):
    """A transformer block's forward pass, paused before each group of linears that share an input: yields
    that input, so that the caller can quantize those linears in place before the pass goes on. Yields the
    block's output last. Mirrors model.TransformerBlock.forward. A paused pass holds only x, m and h, as
    `acts` keeps them; what is cheap to recompute is recomputed rather than held for every chunk: the norms,
    and SwiGLU's (B, T, hidden_dim) activation g, the largest, recomputed for the output once w2 is quantized
    (a 7B block at 128 × 2048 tokens: 11.5 GB per stream held in float32). The attention's output m is held
    for wo when the activations are float32 (small models: recomputing it measured 1.3x slower on the
    embedded model) and recomputed when they are 16-bit (large models, where memory decides: then a pass
    holds x or h, never both with m)."""
    def mix():
        return block.attention.mix(block.attention_norm(acts.use(x)), freqs_cis)
    yield block.attention_norm(acts.use(x))                  # input of wq, wk, wv: (B, T, dim)
    m = acts.keep(mix()) if acts.dtype == torch.float32 else None
    yield mix() if m is None else acts.use(m)                # input of wo: (B, T, dim)
    h = acts.keep(acts.use(x) + block.attention.wo(mix() if m is None else acts.use(m)))
    del x, m
    yield block.ffn_norm(acts.use(h))                        # input of w1, w3: (B, T, dim)
    yield block.feed_forward.hidden(block.ffn_norm(acts.use(h)))            # input of w2: (B, T, hidden_dim)
    out = acts.keep(acts.use(h) + block.feed_forward.w2(block.feed_forward.hidden(block.ffn_norm(acts.use(h)))))
    del h                                                    # a finished pass holds nothing but its output
    yield out


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
        """H = 2·XᵀX / n_tokens, made in place of the sum (read once: 485 MB at a 7B w2's 11008 inputs)."""
        H, self.xx = self.xx.mul_(2).div_(self.n), None
        return H

    def cross(self):
        """C = 2·X_fpᵀX_q / n_tokens, in place of its sum as H."""
        C, self.fq = self.fq.mul_(2).div_(self.n), None
        return C

    def ranges(self):
        return self.hi - self.lo             # r_j = max_t X_tj − min_t X_tj


class QuantizationError(ValueError):
    """The numbers of a layer cannot be quantized (NaN or Inf, a Hessian beyond damping): one line."""


DAMPING_RETRIES = []  # safe_cholesky's retries, in order; quantize_block names their layer, main() reports them


def safe_cholesky(H, upper: bool = False):
    """torch.linalg.cholesky, for a Hessian that may be degenerate (collinear inputs, too little damping): a
    factorisation that fails is retried with 10×, 100× and 1000× DAMP · mean(diag H) added to the diagonal,
    and each retry is recorded in DAMPING_RETRIES (the report lists them). A Hessian with NaN or Inf
    entries, or one no retry rescues, is a QuantizationError."""
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


def fias_target(W, H, C, delta):
    """W* = W·(C + δI)·(H + δI)⁻¹, with H already damped (H = H̃ + δI).

    ‖W·X_fpᵀ − Ŵ·X_qᵀ‖² + δ‖W − Ŵ‖²
        = const + ‖(W* − Ŵ)·X_qᵀ‖² + δ‖W* − Ŵ‖² (in units of n/2), so every stage below quantizes W*
    against H unchanged. Where the streams agree (C = H̃), W* = W. Solved in float64 through H's Cholesky.
    At a 7B w2's 11008 inputs each (in, in) float64 is 970 MB: C's copy is freed before H's factor is made,
    and the caller's float32 C with it (the caller passes it without keeping it)."""
    C = C.double()
    C.diagonal().add_(delta)                                  # C + δI, without an (in, in) identity
    rhs = C.T @ W.double().T                                  # (in, out)
    del C
    L = safe_cholesky(H.double())
    return torch.cholesky_solve(rhs, L).T.to(W.dtype)


class OutputErrors:
    """Σ‖Ŵ·x_q − W·x_fp‖² and Σ‖W·x_fp‖² for every linear of a block, as the two streams run chunk by
    chunk: a forward hook on each full-precision linear queues its output, the hook on the quantized twin
    takes the oldest one, so chunk i of one stream meets chunk i of the other. Only the linears in `active`
    are measured: those just quantized, once per chunk (the output pass recomputes w1 and w3)."""

    def __init__(self, fp_block, q_block):
        self.queued, self.err, self.ref, self.active = {}, {}, {}, ()
        self.handles = []
        for name, mod in fp_block.named_modules():
            if isinstance(mod, nn.Linear):
                self.queued[name], self.err[name], self.ref[name] = [], 0.0, 0.0
                self.handles.append(mod.register_forward_hook(self.queue(name)))
                self.handles.append(q_block.get_submodule(name).register_forward_hook(self.compare(name)))

    def queue(self, name):
        def hook(module, inputs, output):
            if name in self.active:
                self.queued[name].append(output)
        return hook

    def compare(self, name):
        def hook(module, inputs, output):
            if name not in self.active:
                return
            ref = self.queued[name].pop(0).float()
            self.err[name] += torch.linalg.vector_norm(output.float() - ref).item() ** 2
            self.ref[name] += torch.linalg.vector_norm(ref).item() ** 2
        return hook

    def relative(self, name) -> float:
        return math.sqrt(self.err[name] / max(self.ref[name], 1e-30))

    def remove(self):
        for h in self.handles:
            h.remove()


# -----------------------------------------------------------------------------
# 2. GPTQ, and the quantizer it shares with stage 3 and the packer

def inverse_cholesky(H):
    """U, the upper Cholesky factor of H⁻¹ (GPTQ's Hinv): d_j = U_jj scales column j's error."""
    return safe_cholesky(torch.cholesky_inverse(safe_cholesky(H)), upper=True)


def round_params(p, unit=None, positive=False):
    """p -> the nearest stored value: fp16 when unit is None, else unit · float8_e4m3(p / unit), unit being a
    power of two per row. `positive`: a grid step, kept above zero."""
    if unit is None:
        return (p.clamp(min=2 ** -24) if positive else p).half().float()
    q = (p / unit).clamp(-FP8_MAX, FP8_MAX)
    if positive:
        q = q.clamp(min=2 ** -9)                              # e4m3's smallest step
    return q.to(torch.float8_e4m3fn).float() * unit


def fp8_unit_exp(W) -> int:
    """The power of two in which a linear's fp8 parameters are counted: its largest |w| maps to ≤ 256 of
    e4m3's 448, leaving room for the compensation to grow weights; 2^-14 of it is still normal."""
    top = W.abs().amax().clamp(min=2 ** -60).item()
    return math.ceil(math.log2(top)) - 8


CLIP_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)   # the clip search's candidate ranges (1: min–max)


def fit_grid(w, salient, maxq: int, unit=None, clip: bool = False):
    """GPTQ's asymmetric grid for a row-group w (out, width), over its salient weights only: [min(w, 0),
    max(w, 0)] in maxq steps. With `clip`, each row takes the shrunk range s·[min, max], s in CLIP_SHRINKS,
    whose grid rounds its salient weights with the least squared error (GPTQ's `mse` search, 2-norm).
    Returns scale and integer zero point, (out,) each."""
    hi = torch.where(salient, w, -torch.inf).amax(1).clamp(min=0)
    lo = torch.where(salient, w, torch.inf).amin(1).clamp(max=0)
    best = None
    for shrink in CLIP_SHRINKS if clip else (1.0,):
        s = round_params((hi - lo) * shrink / maxq, unit, positive=True)
        z = (-lo * shrink / s).round().clamp(0, maxq)
        if not clip:
            return s, z
        codes = torch.round(w / s[:, None]).add_(z[:, None]).clamp_(0, maxq)
        err = torch.where(salient, (kernels.grid_weights(codes, s[:, None], z[:, None]) - w) ** 2, 0).sum(1)
        if best is None:
            best, scale, zero = err, s, z
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def fit_binary(w, salient, colscale=None, unit=None):
    """μ ± α for a row-group w (out, width), over its binary weights only: μ their mean, α = mean|w − μ|, or
    with column scales c (out, width) the least-squares α of μ ± α·c_j: Σ c_j·|w_j − μ| / Σ c_j²."""
    count = (~salient).sum(1).clamp(min=1)
    mu = torch.where(salient, 0, w).sum(1) / count
    if colscale is None:
        alpha = torch.where(salient, 0, (w - mu[:, None]).abs()).sum(1) / count
    else:
        c = colscale
        alpha = torch.where(salient, 0, c * (w - mu[:, None]).abs()).sum(1)
        alpha = alpha / torch.where(salient, 0, c * c).sum(1).clamp(min=1e-30)
    return round_params(mu, unit), round_params(alpha, unit)


def quantize_column(w, salient, maxq: int, scale, zero, mu, alpha, colscale=None):
    """One column w (out,) onto its row-groups' parameters: salient weights to the nearest grid code, the
    others to μ ± α(·c_j) by the side of μ they are on. Returns the values (kernels.py's arithmetic, so the
    packed file decodes to them bit for bit) and the codes (grid code, or 1 for +, 0 for −)."""
    code = torch.round(w / scale).add_(zero).clamp_(0, maxq)
    plus = w >= mu
    values = torch.where(salient, kernels.grid_weights(code, scale, zero),
                         kernels.binary_weights(plus, mu, alpha, colscale))
    return values, torch.where(salient, code, plus.float())


@dataclass
class Params:
    """One quantizer's parameters, (out, ng) each, float32 holding their stored precision."""
    scale: torch.Tensor
    zero: torch.Tensor
    mu: torch.Tensor
    alpha: torch.Tensor


def gptq(W, U, salient, bits: int, group_size: int, unit=None, colscale=None, compensate: bool = True,
         clip: bool = False):
    """GPTQ (Frantar et al. 2022): quantize W (out, in) one column at a time, in order, and spread each
    column's error over the columns not yet quantized along the rows of U (the upper Cholesky factor of
    H⁻¹), which minimises ‖(W − Ŵ)·Xᵀ‖² for the H = 2XᵀX/n that U came from. A row-group's
    parameters are fitted when the loop enters it, on the weights compensated so far. Lazy batch updates: inside a
    row-group only the group's columns are updated; the rest get one matmul per group.
    salient (out, in): True on the `bits`-bit grid, False to μ ± α; unit (out,): fp8 parameters' power of
    two per row (None: fp16); colscale (out, in): each row's column scales c_j (None: μ ± α).
    Returns Ŵ, the codes (out, in) uint8 and the Params. Works on Wᵀ: a column is a contiguous row."""
    Wt, St = W.T.contiguous(), salient.T.contiguous()         # (in, out)
    n, out = Wt.shape
    ng, maxq = math.ceil(n / group_size), 2 ** bits - 1
    P = Params(torch.ones(out, ng, device=W.device), *(torch.zeros(out, ng, device=W.device) for _ in range(3)))
    codes = torch.zeros(n, out, dtype=torch.uint8, device=W.device)
    has_grid, has_binary = bool(salient.any()), not bool(salient.all())
    for g0 in range(0, n, group_size):
        g1, g = min(g0 + group_size, n), g0 // group_size
        w, m = Wt[g0:g1].T, St[g0:g1].T                       # (out, width)
        if has_grid:
            P.scale[:, g], P.zero[:, g] = fit_grid(w, m, maxq, unit, clip)
        if has_binary:
            P.mu[:, g], P.alpha[:, g] = fit_binary(w, m, None if colscale is None else colscale[:, g0:g1], unit)
        scale, zero, mu, alpha = (p[:, g].clone() for p in (P.scale, P.zero, P.mu, P.alpha))
        Err = torch.empty(g1 - g0, out, device=W.device)
        for j in range(g0, g1):
            q, codes[j] = quantize_column(Wt[j], St[j], maxq, scale, zero, mu, alpha,
                                          None if colscale is None else colscale[:, j])
            if compensate:
                err = Err[j - g0]
                torch.sub(Wt[j], q, out=err).div_(U[j, j])
                Wt[j + 1:g1].addr_(U[j, j + 1:g1], err, alpha=-1)
            Wt[j] = q                                           # quantized columns are never updated again
        if compensate and g1 < n:
            Wt[g1:].addmm_(U[g0:g1, g1:].T, Err, alpha=-1)
    return Wt.T.contiguous(), codes.T, P


def descend_codes(W, W_hat, codes, salient, P: Params, H, maxq: int, group_size: int, colscale=None,
                  compiled: bool | None = None):
    """One sweep of coordinate descent on GPTQ's objective f = Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ (QuantEase): each
    weight in turn, the others held, takes the value that lowers f most among its own: a salient weight any
    code of its grid, a binary one its other sign. Moving ŵ_rj by t changes f by −2t·g_rj + t²·H_jj, with
    g = (W − Ŵ)·H, so the best code is the rounded 1-D optimum and a sign flips where that change is
    negative. Rows are independent. compiled (default: on the CPU): each thread sweeps whole rows
    (kernels.descend_rows); else all rows move at once, column by column, below, and g is kept exact as GPTQ's
    updates are (inside a row-group per column, then one matmul). Updates W_hat and codes in place."""
    out, n = W.shape
    grad = (W - W_hat) @ H                                      # g: (out, in)
    code = codes.float()
    if compiled is None:
        compiled = W.device.type == "cpu"
    if compiled:
        c = torch.ones(1, 1).expand(out, n) if colscale is None else colscale
        kernels.descend_rows(grad.numpy(), H.numpy(), code.numpy(), salient.numpy(),
                             *(p.contiguous().numpy() for p in (P.scale, P.mu, P.alpha)), c.numpy(),
                             float(maxq), group_size)
    else:
        col_group = torch.arange(n, device=W.device) // group_size
        mu, alpha = P.mu[:, col_group], P.alpha[:, col_group]
        flip_by = kernels.binary_weights(code == 0, mu, alpha, colscale) - W_hat   # t to the other sign
        for g0 in range(0, n, group_size):
            g1, scale = min(g0 + group_size, n), P.scale[:, g0 // group_size]
            moves = torch.zeros(out, g1 - g0, device=W.device)     # this row-group's moves t so far
            for k in range(g1 - g0):
                j = g0 + k
                g = torch.addmv(grad[:, j], moves[:, :k], H[g0:j, j], alpha=-1)   # g_rj after earlier moves
                best = (code[:, j] + g / (H[j, j] * scale)).round_().clamp_(0, maxq)
                t = flip_by[:, j]
                flip = t * (t * H[j, j] - 2 * g) < 0
                moves[:, k] = torch.where(salient[:, j], scale * (best - code[:, j]), torch.where(flip, t, 0))
                code[:, j] = torch.where(salient[:, j], best, torch.where(flip, 1 - code[:, j], code[:, j]))
            grad[:, g1:].addmm_(moves, H[g0:g1, g1:], alpha=-1)   # (earlier columns' g is not read again)
    W_hat[:] = kernels.dequantize_codes(code, salient, P.mu, P.alpha, P.scale, P.zero, colscale,
                                        group_size=group_size)          # exactly the codes' values
    codes[:] = code.to(torch.uint8)


def refit_params(W, W_hat, codes, salient, P: Params, H, group_size: int, unit=None, colscale=None):
    """μ, α and the grid scale of every (row, row-group), by least squares on f for the codes held fixed
    (ARB-LLM's alternating step, against the calibration's H as its ARB-X): ŵ_rj is linear in them, as
    μ + α·s·c_j (s = ±1) on binary weights and scale·(code − zero) on salient ones (zero points stay).
    Rounded to their stored precision; a row keeps its old parameters where the new ones do not lower its f.
    Returns Ŵ and the Params."""
    out, n = W.shape
    ng = math.ceil(n / group_size)
    col_group = torch.arange(n, device=W.device) // group_size
    c = torch.ones(out, n, device=W.device) if colscale is None else colscale
    binary, code = (~salient).float(), codes.float()
    # ŵ_r = Σ_g Σ_a θ_r[g, a]·basis_r[:, a] over row-group g's columns: a = μ, α, scale
    basis = torch.stack([binary, binary * (2 * code - 1) * c, salient * (code - P.zero[:, col_group])], -1)
    HB = torch.empty(out, n, ng, 3, device=W.device)          # H·basis, one row-group's columns at a time
    for gi, g0 in enumerate(range(0, n, group_size)):
        HB[:, :, gi] = torch.einsum("ij,rja->ria", H[:, g0:g0 + group_size], basis[:, g0:g0 + group_size])
    A = torch.empty(out, ng, 3, ng, 3, device=W.device)       # basisᵀ·H·basis, per row
    for gi, g0 in enumerate(range(0, n, group_size)):
        A[:, :, :, gi] = torch.einsum("riga,rib->rgab", HB[:, g0:g0 + group_size], basis[:, g0:g0 + group_size])
    b = torch.einsum("riga,ri->rga", HB, W).reshape(out, 3 * ng)
    A = A.reshape(out, 3 * ng, 3 * ng)
    diag = A.diagonal(dim1=1, dim2=2)
    unused = diag == 0                                       # a parameter with no weights (all salient, ...)
    diag.add_(unused.float() + 1e-6 * diag.mean(1, keepdim=True))      # and a ridge: μ, α collinear if one sign
    theta = torch.linalg.solve(A.double(), b.double()).float().reshape(out, ng, 3)
    unit = None if unit is None else unit[:, None]
    mu = round_params(theta[..., 0], unit)
    alpha = round_params(theta[..., 1].clamp(min=0), unit)
    scale = round_params(theta[..., 2].clamp(min=2 ** -24), unit, positive=True)
    un = unused.reshape(out, ng, 3)
    new = Params(torch.where(un[..., 2], P.scale, scale), P.zero, torch.where(un[..., 0], P.mu, mu),
                 torch.where(un[..., 1], P.alpha, alpha))
    W_new = kernels.dequantize_codes(codes, salient, new.mu, new.alpha, new.scale, new.zero, colscale,
                                     group_size=group_size)

    def f(W_q):
        E = W - W_q
        return (E @ H * E).sum(1)
    better = (f(W_new) < f(W_hat))[:, None]
    P = Params(*(torch.where(better, p_new, p) for p_new, p in zip(
        (new.scale, new.zero, new.mu, new.alpha), (P.scale, P.zero, P.mu, P.alpha))))
    return torch.where(better, W_new, W_hat), P


DESCENT_SWEEPS = 2    # sweeps of coordinate descent after GPTQ and after each refit (`refine`)


def refine(W, W_hat, codes, salient, P: Params, H, maxq: int, group_size: int, rounds: int, unit=None,
           colscale=None):
    """ARB-LLM's alternating refinement of GPTQ's result, on GPTQ's own objective: DESCENT_SWEEPS sweeps of
    coordinate descent on the codes, then `rounds` times the parameters refitted and the codes swept again.
    No step raises f. Returns Ŵ, the codes and the Params."""
    W_hat, codes = W_hat.clone(), codes.clone()
    for step in range(rounds + 1):
        if step > 0:
            W_hat, P = refit_params(W, W_hat, codes, salient, P, H, group_size, unit, colscale)
        for _ in range(DESCENT_SWEEPS):
            descend_codes(W, W_hat, codes, salient, P, H, maxq, group_size, colscale)
    return W_hat, codes, P


# -----------------------------------------------------------------------------
# 3. PBAR salience, and the salient sets it chooses

def binarize(W, group_size: int):
    """Each row-group's candidate binarization: μ + α·sign(w − μ), μ = mean(w), α = mean|w − μ|."""
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
    """Version 1: True at the k = round(salient · width) largest entries of M in every row-group."""
    mask = torch.zeros(M.shape, dtype=torch.bool, device=M.device)
    for g0 in range(0, M.shape[1], group_size):
        m = M[:, g0:g0 + group_size]
        k = kernels.salient_count(salient, m.shape[1])
        if k:
            mask[:, g0:g0 + m.shape[1]].scatter_(1, m.topk(k, dim=1).indices, True)
    return mask


def column_mask(M, salient: float, block_rows: int | None):
    """Version 2's structured salient set: every block of `block_rows` rows (None: all rows) keeps the same
    K = round(salient · in) input columns, those with the largest M summed over the block's rows."""
    out, n = M.shape
    R = block_rows or out
    K = kernels.salient_count(salient, n)
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
# 4. Stage 3: the mixed pass, for one group of linears and for one block

@dataclass
class QuantizedLinear:
    """One linear after stage 3: what the packer stores, and the weight the quantized model computes with."""
    weight: torch.Tensor            # Ŵ (out, in) float32: exactly what the packed file decodes to
    codes: torch.Tensor             # (out, in) uint8: the grid code where salient, else the sign (1: μ + α)
    salient: torch.Tensor           # (out, in) bool
    params: Params                  # scale, zero, μ, α per row-group, (out, ng)
    unit_exp: int | None = None     # fp8 parameters count in units of 2^unit_exp (None: fp16)
    colscale: torch.Tensor | None = None   # (in,): binary w = μ ± α·c_j
    rel_error: float = math.nan     # ‖Ŵ·x_q − W·x_fp‖ / ‖W·x_fp‖ over the calibration set


def quantize_linears(weights: list, stats: Stats, s: Settings) -> list[QuantizedLinear]:
    """Quantize linears that share one input (e.g. wq, wk, wv): stacked by rows they share H and every
    stage, which treats rows independently; PBAR's means, the fp8 unit and the column scales are taken per
    linear."""
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
    rows = [w.shape[0] for w in weights]
    # stage 1: every weight to mid_bits
    W_mid = W
    if s.mid_bits is not None:
        W_mid = gptq(W, U, torch.ones_like(W, dtype=torch.bool), s.mid_bits, G)[0]
    # stage 2: PBAR salience on W_mid, the salient set of each linear (salience normalised per linear)
    if 0 < s.salient < 1:
        d, r = U.diag(), stats.ranges()
        M = [pbar_salience(w, d, r, s.lam, G, s.pbar) for w in W_mid.split(rows)]
        if s.structure == "columns":
            mask = torch.cat([column_mask(m, s.salient, s.block_rows) for m in M])
        else:
            mask = torch.cat([salient_mask(m, s.salient, G) for m in M])
    else:
        mask = torch.full(W.shape, s.salient == 1, dtype=torch.bool, device=W.device)
    # stage 3: salient weights to high_bits, the rest to μ ± α, errors compensated column by column
    exps = [fp8_unit_exp(w) if s.scales == "fp8" else None for w in W_mid.split(rows)]
    unit = None
    if s.scales == "fp8":                                      # each row's power of two: its linear's
        unit = torch.cat([torch.full((n,), 2.0 ** e) for n, e in zip(rows, exps)]).to(W.device)
    c, c_rows = [None] * len(rows), None                       # column scales: per linear, and per row
    if s.column_scale and 0 < s.salient < 1:
        c = [column_scales(w, m, G, kernels.SCALE_DTYPES[s.scales]) for w, m in zip(W_mid.split(rows),
                                                                                     mask.split(rows))]
        c_rows = torch.cat([ci.expand(n, -1) for ci, n in zip(c, rows)])   # each row gets its linear's c
    W_3 = W_mid if s.stage3_from == "mid" else W
    W_hat, codes, P = gptq(W_3, U, mask, s.high_bits, G, unit, c_rows, compensate=s.compensate, clip=s.clip)
    if s.refine and 0 < s.salient < 1:                          # then ARB's alternation on the same objective
        W_hat, codes, P = refine(W_3, W_hat, codes, mask, P, H, 2 ** s.high_bits - 1, G, s.refine, unit, c_rows)
    out, r0 = [], 0
    for n, e, ci in zip(rows, exps, c):
        sl = slice(r0, r0 + n)
        p = Params(*(t[sl].cpu() for t in (P.scale, P.zero, P.mu, P.alpha)))
        out.append(QuantizedLinear(W_hat[sl], codes[sl].cpu(), mask[sl].cpu(), p, e,
                                   None if ci is None else ci.cpu()))
        r0 += n
    return out


def quantize_block(i: int, fp_block, xs_fp, xs_q, freqs_cis, s: Settings, acts: Activations):
    """Quantize block i's linears step by step (STEPS), each from its own two-stream statistics.
    xs_fp, xs_q: the block's inputs, one tensor per chunk of calibration samples (the lists are emptied, so
    that memory holds each input only as long as the pass needs it). Returns the QuantizedLinears by name,
    the next block's inputs in both streams, and the seconds spent per step."""
    q_block = copy.deepcopy(fp_block)
    fp_runs = [block_steps(fp_block, x, freqs_cis, acts) for x in xs_fp]
    q_runs = [block_steps(q_block, x, freqs_cis, acts) for x in xs_q]
    xs_fp.clear(), xs_q.clear()   # consumed: the paused passes hold the inputs now, and drop them when they can
    errors = OutputErrors(fp_block, q_block)
    quantized, seconds = {}, {}
    for names in STEPS:
        stats = Stats(s.fias)
        for fp_run, q_run in zip(fp_runs, q_runs):
            stats.add(next(fp_run), next(q_run))
        t0 = time.time()
        linears = [q_block.get_submodule(name) for name in names]
        retries = len(DAMPING_RETRIES)
        try:
            results = quantize_linears([lin.weight for lin in linears], stats, s)
        except QuantizationError as e:
            raise QuantizationError(f"layers.{i} (block {i + 1}): {' + '.join(names)}: {e}") from None
        for r in DAMPING_RETRIES[retries:]:
            r.update(layer=f"layers.{i}", linears=" + ".join(names))
        for name, lin, q in zip(names, linears, results):
            lin.weight.data = q.weight                        # the quantized twin computes with Ŵ (not a copy)
            quantized[name] = q
        seconds[names] = time.time() - t0
        errors.active = names                                 # measured as the passes go on
    ys_fp, ys_q = [], []
    for fp_run, q_run in zip(fp_runs, q_runs):               # chunk by chunk, as the statistics: the error
        ys_fp.append(next(fp_run))                            # hooks then queue one w2 output, not one per chunk
        ys_q.append(next(q_run))                              # (4 GiB at a 7B block's 128 × 2048 tokens)
    errors.remove()
    for name, q in quantized.items():
        q.rel_error = errors.relative(name)
    return quantized, ys_fp, ys_q, seconds


# -----------------------------------------------------------------------------
# 5. Packing (kernels.py holds the format: pack_* beside unpack_*)

def pack(q: QuantizedLinear, s: Settings) -> tuple[dict, dict]:
    """One quantized linear -> (its packed tensors by short name, its spec: what kernels.py needs to read it)."""
    out, n = q.codes.shape
    layout = layout_of(s)
    spec = dict(shape=[out, n], group_size=s.group_size, high_bits=s.high_bits, layout=layout)
    P = q.params
    if layout == kernels.COLUMNS:
        spec.update(block_rows=min(s.block_rows or out, out), k=int(q.salient[0].sum()), scales=s.scales)
        if q.unit_exp is not None:
            spec["unit_exp"] = q.unit_exp
        if q.colscale is not None:
            spec["column_scale"] = True
        tensors = kernels.pack_columns(spec, q.codes, q.salient, P.mu, P.alpha, P.scale, P.zero, q.colscale)
        return tensors, spec
    ks = [0 if layout == "signs" else w if layout == "grid" else kernels.salient_count(s.salient, w)
          for w in kernels.group_widths(n, s.group_size)]
    spec["k"] = ks
    return kernels.pack_groups(spec, q.codes, q.salient, P.mu, P.alpha, P.scale, P.zero), spec


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


def packed_file(net, packed: dict, specs: dict, info: dict) -> tuple[dict, dict]:
    """The packed file's tensors and metadata: quantized linears as packed integer tensors, everything else
    as fp16, and one metadata key holding the config, every linear's spec, a sha256 per tensor and `info`."""
    tensors = {}
    for name, t in net.state_dict().items():
        prefix = name.removesuffix(".weight")
        if prefix in packed or (name == "output.weight" and net.args.tie_embeddings):
            continue
        t16 = t.to(torch.float16)
        if not torch.isfinite(t16).all():
            raise SettingsError(f"{name}: values beyond float16's range")
        tensors[name] = t16.contiguous()
    for prefix, parts in packed.items():
        for k, t in parts.items():
            tensors[f"{prefix}.{k}"] = t.contiguous()
    version = 2 if any(spec["layout"] == kernels.COLUMNS for spec in specs.values()) else 1   # v1 files as before
    meta = dict(format=kernels.FORMAT, version=version, config=asdict(net.args), linears=specs,
                checksums=kernels.checksums(tensors), **info)
    return tensors, {kernels.FORMAT: json.dumps(meta, sort_keys=True)}


# -----------------------------------------------------------------------------
# The pipeline: every block in turn

@dataclass
class Quantized:
    """What quantize() returns: every block linear packed, and the report."""
    packed: dict          # linear name -> its packed tensors by short name
    specs: dict           # linear name -> its spec
    report: list          # one dict per linear: shape, salient, bits, bytes, rel_error, seconds, group
    damping_retries: list


def quantize(net, tokens, s: Settings, device="cpu", log=print, acts: Activations | None = None) -> Quantized:
    """Quantize every block linear of `net` from calibration `tokens` (LongTensor [nsamples, seqlen]).
    Only the current block lives on `device`, the two streams' activations where `acts` says (default: on
    `device`, float32); each block leaves as packed bytes."""
    acts = acts or Activations(torch.float32, device, device)
    args = net.args
    freqs = model.precompute_freqs_cis(args.dim // args.n_heads, tokens.shape[1], args.rope_theta, device)
    chunk = max(1, CHUNK_TOKENS // tokens.shape[1])
    DAMPING_RETRIES.clear()
    result = Quantized({}, {}, [], [])
    with torch.no_grad():
        xs_fp = [acts.keep(net.tok_embeddings(t).float()) for t in tokens.split(chunk)]
        xs_q = xs_fp                                # the streams agree until the first block is quantized
        t_start = time.time()
        for i, layer in enumerate(net.layers):
            t0 = time.time()
            fp_block = copy.deepcopy(layer).to(device=device, dtype=torch.float32)
            quantized, xs_fp, xs_q, seconds = quantize_block(i, fp_block, xs_fp, xs_q, freqs, s, acts)
            for names, sec in seconds.items():
                for name in names:
                    prefix = f"layers.{i}.{name}"
                    tensors, spec = pack(quantized[name], s)
                    result.packed[prefix], result.specs[prefix] = tensors, spec
                    bits = linear_bits(tensors, spec)
                    result.report.append(dict(
                        name=prefix, shape=spec["shape"], salient=salient_per_row(spec) / spec["shape"][1],
                        bits={k: round(v, 4) for k, v in bits.items() if k != "bytes"}, bytes=bits["bytes"],
                        rel_error=round(quantized[name].rel_error, 5), seconds=round(sec, 3),
                        group="+".join(n.split(".")[-1] for n in names)))
            del fp_block
            done = time.time() - t_start
            errs = ", ".join(f"{r['name'].split('.')[-1]} {r['rel_error']:.3f}" for r in result.report[-7:])
            eta = done / (i + 1) * (args.n_layers - i - 1)
            log(f"block {i + 1}/{args.n_layers} in {time.time() - t0:.1f} s (ETA {eta:.0f} s); "
                f"relative output error {errs}")
    result.damping_retries = list(DAMPING_RETRIES)   # a copy: the next quantize() empties the list
    return result


# -----------------------------------------------------------------------------
# The command line: flags, checks of settings and inputs, loading, the atomic write and the printed report
# are plumbing a reader can skip (tools/cli.py, `quantize_command`); it calls quantize and packed_file.

def main(argv=None) -> int:
    """python squeeze10.py [--preset P] [flags]: the preset and the flags make the Settings; tools/cli.py checks
    every input, loads the model and the calibration set, calls quantize(), writes packed_file() atomically
    and prints the report. Returns the exit code (2: bad input, one line on stderr)."""
    from tools import cli
    return cli.quantize_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    from tools import cli
    sys.exit(cli.run_main(main, note="; no partial file is left"))
