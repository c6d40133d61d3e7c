"""kernels.py — Squeeze10's packed format: written, read back, and multiplied without a dense matrix.

squeeze10.py quantizes; everything about the bytes it writes lives here, so that the writer, the reader, the
kernels and the tests cannot drift apart: the format (below), every `pack_*` beside its `unpack_*`, the shape
and encoding checks, and the dequantization arithmetic, written once (`grid_weights`, `binary_weights`) and
used by the quantizer too. Then y = x @ Wᵀ, from plain to fast:
    1. plain torch   `dequantize` and `reference_matmul` (the yardstick every kernel is tested against), and
                     `lookup_signed_sums`: the table-lookup identity the CPU kernels rest on, in ten lines
    2. numba (CPU)   `cpu_layout` + `numba_matmul` (version 1), `columns_cpu_layout` + `columns_matmul` (version 2:
                     nibble tables in LLVM IR for AVX-512 and AVX2 beside their plain twins; `fuse_columns` joins
                     linears that share an input into one call); and `descend_rows`, squeeze10.py's coordinate
                     descent (`descend_codes`) compiled, one row per thread
    3. Triton (GPU)  `triton_matmul` (version 1), `triton_matmul_columns` (version 2), on the file's own bytes
Each kernel's section says what it reads, what it computes, why its loops have their shape, and which plain
function it must agree with. This file imports nothing of the project; `python tools/bench.py` times it.

A quantized linear W (out, in) is cut into row-groups of `group_size` input columns (the last one narrower
when `in` is not a multiple). In each row-group every weight is one of two kinds:
    binary   μ − α or μ + α   (version 2 with column scales: μ ± α·c_j)      `binary_weights`
    salient  scale · (code − zero), the code high_bits wide                   `grid_weights`
and how many are salient is fixed by the spec, so every row-group's bytes sit at a fixed offset. Because the
quantizer and `dequantize` share those two functions, quantize → pack → dequantize reproduces the quantizer's
output bit for bit.

The packed format (version 1). One safetensors file; its metadata holds a single key, "squeeze10", whose
JSON value has "format": "squeeze10", "version", the model config, the settings, the per-linear specs and
the bits report. Every tensor that is not a block linear (embeddings, norms, output head) is stored as fp16.
A quantized linear `P` = "layers.{i}.{attention.wq|...|feed_forward.w3}" of shape (out, in) has row-groups
g = 0..ng-1 of width w_g (128, the last one possibly narrower) and k_g = round(salient·w_g) salient weights
(`salient_count`; k_g = 0 for an all-binary layer, k_g = w_g for an all-grid layer). Its tensors, each
row-major with one row per output channel; inside a row the row-groups follow each other in order, each on
a byte boundary:

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
at a fixed byte offset (`group_table`). The three-way state costs 1.6 bits a weight for what a sign (0.8)
plus a bitmap (1.0) would store in 1.8. `pack_groups` checks every size against `expected_shapes`, which the
reader checks again (`check_spec`).

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

A file is version 2 when any linear uses this layout; the other layouts write version 1.
"""
import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch

numba = None   # numba and llvmlite: imported by load_numba() on the numba backend's first call, not before

triton = None  # Triton ships with PyTorch's CUDA builds; on the CPU it runs kernels under TRITON_INTERPRET=1 only
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":  # else skip its import (~80 MB)
    try:
        import triton
        import triton.language as tl
    except ImportError:
        pass

FORMAT, VERSION = "squeeze10", 2   # version 1: every linear in LAYOUTS; version 2 adds COLUMNS
VERSIONS = (1, 2)                  # the versions this file reads
LAYOUTS = ("trits", "signs", "grid")  # mixed 1/high-bit, all binary, all high-bit (no binary part)
COLUMNS = "columns"                # version 2: salient input columns shared by blocks of rows
SCALE_DTYPES = {"fp16": torch.float16, "fp8": torch.float8_e4m3fn}   # version 2's parameters


# -----------------------------------------------------------------------------
# The format's sizes: what a spec implies

def group_widths(n_in: int, group_size: int) -> list[int]:
    """Widths of the row-groups along the input dimension: [G, G, ..., last (<= G)]."""
    return [min(group_size, n_in - g0) for g0 in range(0, n_in, group_size)]


def salient_count(salient: float, width: int) -> int:
    """How many of `width` weights (or columns) are salient for a salient fraction: round half up."""
    return int(math.floor(salient * width + 0.5))


def trit_bytes(width: int) -> int:
    return math.ceil(width / 5)  # 3^5 = 243 <= 256: five three-way states per byte


def bit_bytes(count: int, nbits: int) -> int:
    return math.ceil(count * nbits / 8)


def column_blocks(spec: dict) -> int:
    """Version 2: how many row-blocks of block_rows rows (the last one possibly shorter)."""
    return math.ceil(spec["shape"][0] / spec["block_rows"])


def scale_unit(spec: dict) -> float:
    """Version 2: what one stored parameter unit is worth: 2^unit_exp for fp8 parameters, 1 for fp16."""
    return 2.0 ** spec.get("unit_exp", 0) if spec["scales"] == "fp8" else 1.0


def group_table(spec: dict) -> torch.Tensor:
    """Version 1: int32 (ng, 5), one row per row-group: first column, width, byte offset in the state stream
    (trits or signs), byte offset in `high`, k. The reader and every kernel walk a row with it."""
    if spec["layout"] == COLUMNS:   # no v1 kernel walks it
        return torch.zeros(0, 5, dtype=torch.int32)
    rows, col, state_at, high_at = [], 0, 0, 0
    for w, k in zip(group_widths(spec["shape"][1], spec["group_size"]), spec["k"]):
        rows.append([col, w, state_at, high_at, k])
        col += w
        state_at += {"trits": trit_bytes(w), "signs": bit_bytes(w, 1), "grid": 0}[spec["layout"]]
        high_at += bit_bytes(k, spec["high_bits"])
    return torch.tensor(rows, dtype=torch.int32)


def expected_shapes(spec: dict) -> dict:
    """Version 1: the shape and dtype of every tensor a linear with this spec must have."""
    out, n_in = spec["shape"]
    widths, ks, hb = group_widths(n_in, spec["group_size"]), spec["k"], spec["high_bits"]
    ng, layout = len(widths), spec["layout"]
    shapes = {}
    if layout == "trits":
        shapes["trits"] = ((out, sum(trit_bytes(w) for w in widths)), torch.uint8)
    if layout == "signs":
        shapes["signs"] = ((out, sum(bit_bytes(w, 1) for w in widths)), torch.uint8)
    if layout != "grid":
        shapes["binary"] = ((out, ng, 2), torch.float16)
    if layout != "signs":
        shapes["high"] = ((out, sum(bit_bytes(k, hb) for k in ks)), torch.uint8)
        shapes["scale"] = ((out, ng), torch.float16)
        shapes["zero"] = ((out, ng), torch.uint8)
    return shapes


def expected_columns_shapes(spec: dict) -> dict:
    """Version 2: the shape and dtype of every tensor a columns-layout linear with this spec must have."""
    out, n_in = spec["shape"]
    k, hb, ng = spec["k"], spec["high_bits"], len(group_widths(n_in, spec["group_size"]))
    dtype = SCALE_DTYPES[spec["scales"]]
    return {"columns": ((column_blocks(spec), bit_bytes(n_in, 1)), torch.uint8),
            "signs": ((out, bit_bytes(n_in - k, 1)), torch.uint8),
            "high": ((out, bit_bytes(k, hb)), torch.uint8),
            "binary": ((out, ng, 2), dtype),
            "scale": ((out, ng), dtype),
            "zero": ((out, bit_bytes(ng, hb)), torch.uint8),
            **({"colscale": ((n_in,), dtype)} if spec.get("column_scale") else {})}


# -----------------------------------------------------------------------------
# The checks a reader makes before it trusts a linear's bytes (each failure: one line, a ValueError)

def check_tensors(tensors: dict, expected: dict, layout: str):
    """Raise ValueError (one line) unless `tensors` have exactly the names, shapes and dtypes `expected`."""
    if set(tensors) != set(expected):
        raise ValueError(f"tensors {sorted(tensors)}, the layout '{layout}' needs {sorted(expected)}")
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")


def check_columns_spec(spec: dict, tensors: dict):
    """check_spec for the columns layout: the spec's fields, then every tensor's shape and dtype."""
    out, n_in = spec["shape"]
    if spec.get("scales") not in SCALE_DTYPES:
        raise ValueError(f"scales {spec.get('scales')!r}: expected one of {', '.join(SCALE_DTYPES)}")
    if not isinstance(spec.get("k"), int) or not 0 < spec["k"] < n_in:
        raise ValueError(f"salient columns {spec.get('k')!r} do not fit {n_in} input columns")
    if not isinstance(spec.get("block_rows"), int) or not 1 <= spec["block_rows"] <= out:
        raise ValueError(f"block_rows {spec.get('block_rows')!r} outside 1..{out}")
    if spec.get("column_scale", False) is not True and "column_scale" in spec:
        raise ValueError(f"column_scale {spec['column_scale']!r}: expected true or absent")
    if not 1 <= spec["high_bits"] <= 8 or not isinstance(spec.get("unit_exp", 0), int):
        raise ValueError(f"high_bits {spec['high_bits']} outside 1..8, or unit_exp not an integer")
    check_tensors(tensors, expected_columns_shapes(spec), COLUMNS)


def check_spec(spec: dict, tensors: dict):
    """Raise ValueError (one line) unless `tensors` are exactly what `spec` implies."""
    if spec.get("layout") == COLUMNS:
        return check_columns_spec(spec, tensors)
    if spec.get("layout") not in LAYOUTS:
        raise ValueError(f"unknown layout {spec.get('layout')!r}")
    widths = group_widths(spec["shape"][1], spec["group_size"])
    if len(spec["k"]) != len(widths) or any(not 0 <= k <= w for k, w in zip(spec["k"], widths)):
        raise ValueError(f"salient counts {spec['k']} do not fit row-groups of widths {widths}")
    if spec["layout"] == "signs" and any(spec["k"]) or spec["layout"] == "grid" and spec["k"] != widths:
        raise ValueError(f"salient counts {spec['k']} contradict the layout '{spec['layout']}'")
    if not 1 <= spec["high_bits"] <= 8:
        raise ValueError(f"high_bits {spec['high_bits']} outside 1..8")
    check_tensors(tensors, expected_shapes(spec), spec["layout"])


def check_encoding(tensors: dict, spec: dict):
    """Raise ValueError (one line: tensor, row, row-group) where the bytes of a linear that passed check_spec
    are not a valid encoding of version 1's layouts: a trits byte above 242 (3⁵ − 1), base-3 digits set past
    a row-group's width, a zero point outside the salient grid 0 .. 2^high_bits − 1. A layout this function
    does not know passes unchecked. One vectorised pass over the state bytes and the zero points."""
    if spec.get("layout") not in LAYOUTS:
        return
    widths = group_widths(spec["shape"][1], spec["group_size"])

    def first(bad: torch.Tensor):                                # (row, column) of the first True, or None
        hit = bad.flatten().nonzero()
        return None if len(hit) == 0 else divmod(int(hit[0]), bad.shape[1])
    if spec["layout"] == "trits":
        trits = tensors["trits"]
        ends = np.cumsum([trit_bytes(w) for w in widths])       # one past each row-group's last byte
        limit = torch.full((trits.shape[1],), 242, dtype=torch.uint8)
        limit[ends - 1] = torch.tensor([3 ** (w % 5) - 1 if w % 5 else 242 for w in widths], dtype=torch.uint8)
        at = first(trits > limit)
        if at is not None:
            r, c = at
            g = int(np.searchsorted(ends, c, side="right"))
            v = int(trits[r, c])
            why = "above 242 = 3^5 - 1" if v > 242 else f"sets base-3 digits past the row-group's width {widths[g]}"
            raise ValueError(f"trits row {r}, row-group {g}: byte {v} {why}")
    if "zero" in tensors:
        at = first(tensors["zero"].int() >= 2 ** spec["high_bits"])   # (as uint8, 2**8 would wrap to 0)
        if at is not None:
            r, g = at
            raise ValueError(f"zero row {r}, row-group {g}: zero point {int(tensors['zero'][r, g])} is outside "
                             f"the {spec['high_bits']}-bit grid 0..{2 ** spec['high_bits'] - 1}")


CHECKSUM = "sha256"  # hashlib's, with SHA-NI on x86: 1.6 GB/s here, twice blake2b; any tool can recompute it


def tensor_checksum(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes in row-major order: exactly the bytes a safetensors file stores for it."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()


def checksums(tensors: dict) -> dict:
    """The metadata's record of every tensor's bytes, which the loader checks: any tensor of any layout, so
    that a flipped bit anywhere in the file is found and named."""
    return dict(algorithm=CHECKSUM, tensors={n: tensor_checksum(t) for n, t in sorted(tensors.items())})


# -----------------------------------------------------------------------------
# Bits and trits: each packer beside its unpacker

def pack_bits(values: torch.Tensor, nbits: int) -> torch.Tensor:
    """(rows, count) integers < 2^nbits -> (rows, ceil(count·nbits/8)) uint8, least significant bit first."""
    rows, count = values.shape
    bits = (values.to(torch.int32)[..., None] >> torch.arange(nbits, dtype=torch.int32)) & 1
    bits = bits.reshape(rows, count * nbits)
    nbytes = bit_bytes(count, nbits)
    bits = torch.nn.functional.pad(bits, (0, nbytes * 8 - count * nbits))
    return (bits.reshape(rows, nbytes, 8) << torch.arange(8, dtype=torch.int32)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """(rows, nbytes) uint8 holding `count` values of `nbits` bits each, least significant bit first
    -> (rows, count) int32: the inverse of pack_bits."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    bits = (packed.to(torch.int32)[..., None] >> shifts) & 1                 # (rows, nbytes, 8)
    bits = bits.flatten(1)[:, :count * nbits].reshape(-1, count, nbits)
    weights = 1 << torch.arange(nbits, device=packed.device, dtype=torch.int32)
    return (bits * weights).sum(-1, dtype=torch.int32)


def pack_trits(states: torch.Tensor) -> torch.Tensor:
    """(rows, count) values in {0, 1, 2} -> (rows, ceil(count/5)) uint8, five base-3 digits per byte, least
    significant first."""
    rows, count = states.shape
    nbytes = trit_bytes(count)
    states = torch.nn.functional.pad(states.to(torch.int32), (0, nbytes * 5 - count))
    powers = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
    return (states.reshape(rows, nbytes, 5) * powers).sum(-1).to(torch.uint8)


def unpack_trits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """(rows, nbytes) uint8, five base-3 digits per byte (least significant first) -> (rows, count) int32: the
    inverse of pack_trits."""
    powers = torch.tensor([1, 3, 9, 27, 81], device=packed.device, dtype=torch.int32)
    digits = (packed.to(torch.int32)[..., None] // powers) % 3             # (rows, nbytes, 5)
    return digits.flatten(1)[:, :count]


# -----------------------------------------------------------------------------
# The dequantization arithmetic, written once: squeeze10.py's quantizer, `dequantize` and the tests all call
# these, so that quantize → pack → dequantize is exact (float32, elementwise, in this order)

def grid_weights(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Salient weights: scale · (code − zero). Float32 tensors that broadcast against each other."""
    return scale * (codes - zero)


def binary_weights(plus: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, colscale=None) -> torch.Tensor:
    """Binary weights: μ + α where `plus` (bool), else μ − α; with column scales c_j, μ ± α·c_j
    (ARB-LLM's RC). Float32 tensors that broadcast against each other."""
    ac = alpha if colscale is None else alpha * colscale
    return torch.where(plus, mu + ac, mu - ac)


def dequantize_codes(codes, mask, mu, alpha, scale, zero, colscale=None, *, group_size: int) -> torch.Tensor:
    """Ŵ (out, in) float32 from each weight's code (its sign bit, 1: +, where `mask` (out, in) is False) and
    its row-group's parameters mu, alpha, scale, zero (out, ng) float32; colscale (in,), (out, in) or None. What every
    unpack_* returns and every pack_* takes."""
    col_group = torch.arange(codes.shape[1], device=codes.device) // group_size   # each column's row-group
    codes = codes.float()
    binary = binary_weights(codes == 1, mu[:, col_group], alpha[:, col_group], colscale)
    return torch.where(mask, grid_weights(codes, scale[:, col_group], zero[:, col_group]), binary)


# -----------------------------------------------------------------------------
# Version 1: a linear as row-groups, each with its own salient weights

def pack_groups(spec: dict, codes, mask, mu, alpha, scale, zero) -> dict:
    """Version 1: one quantized linear -> its packed tensors by short name (the inverse of `unpack_groups`).
    codes (out, in): each weight's grid code, or its sign bit (1: +) where mask (out, in) is False;
    mu, alpha, scale, zero (out, ng) float32, already at their stored precision (fp16)."""
    out, n = spec["shape"]
    G, hb, layout = spec["group_size"], spec["high_bits"], spec["layout"]
    states, high = [], []
    for g, (w, k) in enumerate(zip(group_widths(n, G), spec["k"])):
        c, m = codes[:, g * G:g * G + w], mask[:, g * G:g * G + w]
        assert int(m.sum()) == out * k, "every row-group holds exactly k salient weights"
        if layout == "trits":
            states.append(pack_trits(torch.where(m, 2, c.to(torch.int32))))
        elif layout == "signs":
            states.append(pack_bits(c, 1))
        if layout != "signs" and k:
            high.append(pack_bits(c[m].reshape(out, k), hb))
    tensors = {}
    if layout != "grid":
        tensors[layout] = torch.cat(states, 1)
        tensors["binary"] = torch.stack([mu, alpha], -1).half()
    if layout != "signs":
        tensors["high"] = torch.cat(high, 1) if high else torch.zeros(out, 0, dtype=torch.uint8)
        tensors["scale"], tensors["zero"] = scale.half(), zero.to(torch.uint8)
    check_tensors(tensors, expected_shapes(spec), layout)
    return tensors


def group_params(tensors: dict, spec: dict) -> tuple:
    """Version 1: mu, alpha, scale, zero (out, ng) float32, as stored; zeros where the layout has none."""
    out, ng = spec["shape"][0], len(group_widths(spec["shape"][1], spec["group_size"]))
    zeros = torch.zeros(out, ng, device=next(iter(tensors.values())).device)
    mu, alpha = tensors["binary"].float().unbind(-1) if spec["layout"] != "grid" else (zeros, zeros)
    scale, zero = (tensors["scale"].float(), tensors["zero"].float()) if spec["layout"] != "signs" else (zeros, zeros)
    return mu, alpha, scale, zero


def unpack_groups(tensors: dict, spec: dict) -> tuple:
    """Version 1: a linear's packed tensors (checked) -> codes (out, in) float32, mask (out, in) bool and mu,
    alpha, scale, zero (out, ng) float32 (zeros where the layout has none): the arguments of pack_groups.
    A row whose row-group does not hold exactly k salient weights is a ValueError."""
    check_spec(spec, tensors)
    out, n_in = spec["shape"]
    hb, layout = spec["high_bits"], spec["layout"]
    device = next(iter(tensors.values())).device
    codes = torch.zeros(out, n_in, dtype=torch.float32, device=device)
    mask = torch.full((out, n_in), layout == "grid", device=device)          # grid: every weight is salient
    for g, (col, w, state_at, high_at, k) in enumerate(group_table(spec).tolist()):
        c, m = codes[:, col:col + w], mask[:, col:col + w]                   # views: written in place
        if layout == "trits":
            states = unpack_trits(tensors["trits"][:, state_at:state_at + trit_bytes(w)], w)
            m[:], c[:] = states == 2, (states == 1).float()
        elif layout == "signs":
            c[:] = unpack_bits(tensors["signs"][:, state_at:state_at + bit_bytes(w, 1)], 1, w).float()
        if m.sum(1).ne(k).any():
            raise ValueError(f"row-group {g}: a row does not hold exactly {k} salient weights")
        if k > 0:                                            # row-major: each row's k codes in column order
            c[m] = unpack_bits(tensors["high"][:, high_at:high_at + bit_bytes(k, hb)], hb, k).flatten().float()
    return codes, mask, *group_params(tensors, spec)


# -----------------------------------------------------------------------------
# Version 2: the "columns" layout
#
# Every block of `block_rows` rows keeps the same k salient input columns, named by one bitmap per block.
# A row's binary weights follow each other in column order in "signs", its salient codes in "high": with x
# permuted per block so that the block's binary columns come first, W·x is a dense 1-bit product plus a
# dense high_bits one. μ, α, scale and zero stay per row-group of `group_size` original columns.

def pack_columns(spec: dict, codes, mask, mu, alpha, scale, zero, colscale=None) -> dict:
    """Version 2: one quantized linear -> its packed tensors (the inverse of `unpack_columns`): per-block
    column bitmaps, each row's binary signs and salient codes in column order, its parameters in fp16, or fp8
    in units of 2^unit_exp (zeros in high_bits bits). Arguments as pack_groups; colscale (in,) or None."""
    out, n = spec["shape"]
    R, k = spec["block_rows"], spec["k"]
    first = mask[::R]                                            # (blocks, in): each block's first row
    assert torch.equal(first.repeat_interleave(R, 0)[:out], mask), "rows of a block share their salient columns"
    dtype = SCALE_DTYPES[spec["scales"]]
    unit = scale_unit(spec)

    def stored(p):                                               # already rounded: the cast is exact
        t = (p / unit).to(dtype)
        assert torch.equal(t.float() * unit, p), "parameters hold their stored precision"
        return t
    tensors = dict(columns=pack_bits(first.to(torch.int32), 1),
                   signs=pack_bits(codes[~mask].reshape(out, n - k), 1),
                   high=pack_bits(codes[mask].reshape(out, k), spec["high_bits"]),
                   binary=stored(torch.stack([mu, alpha], -1)),
                   scale=stored(scale),
                   zero=pack_bits(zero.to(torch.int32), spec["high_bits"]))
    if spec.get("column_scale"):
        tensors["colscale"] = colscale.to(dtype)
        assert torch.equal(tensors["colscale"].float(), colscale)
    check_tensors(tensors, expected_columns_shapes(spec), COLUMNS)
    return tensors


def salient_columns(tensors: dict, spec: dict) -> torch.Tensor:
    """(out, in) bool: True at every row's salient columns, from the per-block bitmaps (checked: k each)."""
    out, n_in = spec["shape"]
    blocks = unpack_bits(tensors["columns"], 1, n_in).bool()                # (blocks, in)
    counts = blocks.sum(1)
    if counts.ne(spec["k"]).any():
        b = int(counts.ne(spec["k"]).nonzero()[0])
        raise ValueError(f"row-block {b} marks {int(counts[b])} salient columns, expected {spec['k']}")
    return blocks.repeat_interleave(spec["block_rows"], 0)[:out]


def unpack_columns(tensors: dict, spec: dict) -> tuple:
    """Version 2: a linear's packed tensors (checked) -> codes (out, in) float32, mask (out, in) bool, mu,
    alpha, scale (out, ng) float32 (fp16 as stored, or fp8 times 2^unit_exp), zero (out, ng) float32 and
    colscale (in,) float32 or None: the arguments of pack_columns."""
    check_columns_spec(spec, tensors)
    out, n_in = spec["shape"]
    k, hb = spec["k"], spec["high_bits"]
    mask = salient_columns(tensors, spec)                                    # (out, in)
    codes = torch.zeros(out, n_in, dtype=torch.float32, device=mask.device)
    codes[~mask] = unpack_bits(tensors["signs"], 1, n_in - k).flatten().float()   # row-major: column order
    codes[mask] = unpack_bits(tensors["high"], hb, k).flatten().float()
    binary = tensors["binary"].float() * scale_unit(spec)
    scale = tensors["scale"].float() * scale_unit(spec)
    zero = unpack_bits(tensors["zero"], hb, scale.shape[1]).float()
    colscale = tensors["colscale"].float() if spec.get("column_scale") else None
    return codes, mask, binary[..., 0], binary[..., 1], scale, zero, colscale


# -----------------------------------------------------------------------------
# 1. Plain torch: the reference every kernel below is tested against

def dequantize_columns(tensors: dict, spec: dict) -> torch.Tensor:
    """Dense float32 weight of a columns-layout linear (version 2)."""
    return dequantize_codes(*unpack_columns(tensors, spec), group_size=spec["group_size"])


def dequantize(tensors: dict, spec: dict) -> torch.Tensor:
    """Dense float32 weight (out, in) of one packed linear, either version. `tensors`: the linear's packed
    tensors by short name (trits|signs, high, binary, scale, zero; version 2: columns, ..., colscale);
    `spec`: shape, group_size, high_bits, layout, k (version 2: block_rows, scales, ...)."""
    if spec.get("layout") == COLUMNS:
        return dequantize_columns(tensors, spec)
    return dequantize_codes(*unpack_groups(tensors, spec), group_size=spec["group_size"])


def reference_matmul(x: torch.Tensor, tensors: dict, spec: dict) -> torch.Tensor:
    """y = x @ Wᵀ the obvious way: unpack W to a dense matrix, then torch.matmul. Short and plainly right; the
    tests hold the kernels to it (and to a float64 version of it)."""
    return x @ dequantize(tensors, spec).to(device=x.device, dtype=x.dtype).T


def lookup_signed_sums(x: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """Σ_j s_j·x_j for every row of signs s = ±1 (plus (rows, in) bool: s = +1), the way the CPU kernels do it
    (T-MAC): Σ s·x = 2·Σ₊x − Σx, Σ₊x costing one table lookup per 8 weights. x (in,) float32 -> (rows,)."""
    x8 = torch.nn.functional.pad(x, (0, -len(x) % 8)).reshape(-1, 8)         # (bytes, 8): 8 activations a byte
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1              # (256, 8): the bits of each byte value
    T = x8 @ bits.T.float()                       # (bytes, 256): T[b, v] = Σ of byte b's activations set in v
    signs = pack_bits(plus.to(torch.int32), 1).long()                       # (rows, bytes): 8 signs a byte
    plus_sums = T[torch.arange(T.shape[0]), signs].sum(1)                   # Σ₊x: a lookup per byte
    return 2 * plus_sums - x.sum()


# -----------------------------------------------------------------------------
# 2. numba (CPU), version 1: y = x @ Wᵀ as `reference_matmul` computes it, without a dense W
#
# What a batch-1 product must do, per row-group of 128 weights (26 of them salient, 4-bit):
#   read    16 sign bytes, 26 salient entries of 2 bytes, 16 bytes of group constants (the file's trits are
#           repacked once, when the model is loaded, into this layout: `cpu_layout`);
#   compute y += (μ−α)·Σx + 2α·Σ_{plus} x       over all 128 weights (as Σ s·x = 2·Σ_{s=+1} x − Σ x)
#              + scale·Σ_sal code·x − (scale·zero + μ−α)·Σ_sal x       a correction at the 26 salient ones
# Σ_{plus} x costs one table lookup per 8 weights (T-MAC; `lookup_signed_sums` above is the same in torch): per
# call, each sign-byte position b gets the 256 subset sums of its 8 activations, so a sign byte is its own index.
# The salient weights are a list of (code << pos_bits | position) entries, a fixed number per row-group, so
# their loop has a fixed trip count.
# The rows are interleaved in blocks of 16, so the 16 lookups of one sign-byte position hit the same 1 KB
# table row, and the 16 salient entries of one index share the same 128 activations: both inner loops are
# then one 16-wide gather each (AVX-512 `vgatherdps`: 16 lanes of 32-bit indices into one base pointer).
# numba's compiler will not emit those gathers from Python loops (it left both lookups scalar, at ~2.5× the
# time: the README's "Kernels" section has the history), so the two loops are written in LLVM IR below and
# called from numba as intrinsics; everything around them is ordinary numba. `llvm.masked.gather` is LLVM's
# portable gather: on a CPU without AVX-512 it becomes two 8-wide AVX2 gathers, or scalar loads.
# Larger batches (above SMALL_BATCH rows, BIG_LAYER_BATCH for the big layers) skip the tables: tiles of rows are
# decoded to float32 in cache (transposed: `_decode_tile`) and multiplied by BLAS, so prefill runs near dense
# speed while no dense weight matrix ever exists whole.

# numba is imported lazily: a user of model.py or squeeze10.py who never runs the numba backend does not pay its
# import (~0.5 s and ~100 MB) nor its compilation. `@cpu_kernel(...)` records a function for numba.njit(...) and
# leaves a stand-in that, on its first call, runs load_numba(): numba is imported, the IR intrinsics are defined,
# and every recorded function is replaced in this module by its numba dispatcher (compiled on its first call, or
# read from numba's cache, as numba.njit always does).
_CPU_KERNELS = {}        # name -> (Python function, numba.njit options)


def cpu_kernel(**options):
    def record(fn):
        _CPU_KERNELS[fn.__name__] = (fn, options)

        def first_call(*args):
            load_numba()
            return globals()[fn.__name__](*args)
        first_call.py_func = fn
        return first_call
    return record


def load_numba():
    """Import numba and compile-on-demand every @cpu_kernel function (a no-op after the first call)."""
    global numba
    if numba is not None:
        return
    import numba as numba_module
    import numba.core.cgutils    # noqa: F401  (used by the intrinsics)
    import numba.extending       # noqa: F401
    numba = numba_module
    _define_intrinsics()
    _define_nibble_intrinsics()
    for name, (fn, options) in _CPU_KERNELS.items():
        globals()[name] = numba.njit(**options)(fn)


LANES = 16               # rows interleaved per block of the CPU layout (the IR below is written for 16)
SMALL_BATCH = 4          # up to this many rows of x: the table kernel; above: decoded tiles and BLAS ...
BIG_LAYER_BATCH = 10     # ... or up to this many for a layer of at least 2^24 weights. Measured here, both paths
                         # forced, 11008×4096 at 5/8/12/16 rows: tables 12/19/27/37 ms, tiles 27/29/33/37 ms;
                         # 576×576 at 5 rows: tables 0.25 ms, tiles 0.19 ms
TILE_BYTES = 1 << 20     # one decoded tile of rows (transposed): about L2-sized
CHUNK_GROUPS = 96        # at most this many row-groups per pass of the table kernel: ≤ 1.5 MB of tables, in L2


def by_blocks(a: torch.Tensor, R: int) -> np.ndarray:
    """(out, ...) -> (ceil(out/R), ..., R): each block of R rows along the last axis, zero rows padding the last
    block. Version 1 interleaves LANES rows; version 2, the rows of a row-block."""
    blocks = -(-a.shape[0] // R)
    a = torch.cat([a, a.new_zeros(blocks * R - a.shape[0], *a.shape[1:])])
    return np.ascontiguousarray(a.reshape(blocks, R, *a.shape[1:]).movedim(1, -1).numpy())


def cpu_layout(tensors: dict, spec: dict) -> dict:
    """Repack one linear for the numba kernels (same weights, ~5.3 bits each for the default preset):
      signs  uint8  (blocks, Σ ceil(w/8), 16)   bit p of a row-group: weight p is μ+α (0: μ−α, or salient)
      sal    uint16 (blocks, Σ k, 16)           code << pos_bits | position, each row-group's in column order
      const  fp32   (blocks, ng, 4, 16)         2α, μ−α, scale, scale·zero + μ−α
      groups int64  (ng, 6)                     first column, width, sign bytes [start, end), first entry, k
    Rows are interleaved in blocks of LANES (the last axis). A row-group whose count of salient weights is not
    its k (a damaged file) is a ValueError."""
    check_spec(spec, tensors)
    out, n_in = spec["shape"]
    G, hb, layout = spec["group_size"], spec["high_bits"], spec["layout"]
    pos_bits = max(1, (G - 1).bit_length())
    if pos_bits + hb > 16:
        raise ValueError(f"group_size {G} with {hb}-bit codes does not fit the numba kernel's 16-bit entries")
    table = group_table(spec).numpy().astype(np.int64)                       # col, w, state_at, high_at, k
    nsign = np.array([0 if layout == "grid" else bit_bytes(w, 1) for w in table[:, 1]], dtype=np.int64)
    sign_at = np.concatenate([[0], np.cumsum(nsign)])
    sal_at = np.concatenate([[0], np.cumsum(table[:, 4])])
    groups = np.stack([table[:, 0], table[:, 1], sign_at[:-1], sign_at[1:], sal_at[:-1], table[:, 4]], 1)
    empty = np.zeros((out, 0), np.uint8)
    state = tensors[layout].numpy() if layout != "grid" else empty
    high = tensors["high"].numpy() if "high" in tensors else empty
    signs, sal = np.zeros((out, sign_at[-1]), np.uint8), np.zeros((out, sal_at[-1]), np.uint16)
    bad = _repack(state, high, table, LAYOUTS.index(layout), hb, pos_bits, groups, signs, sal)
    if bad >= 0:
        r, g = divmod(bad, len(table))
        raise ValueError(f"row {r}, row-group {g}: its states do not mark exactly k = {table[g, 4]} salient weights")
    mu, alpha, scale, zero = group_params(tensors, spec)
    const = torch.stack([2 * alpha, mu - alpha, scale, scale * zero + (mu - alpha)], -1)   # (out, ng, 4)
    return dict(signs=by_blocks(torch.from_numpy(signs), LANES), const=by_blocks(const, LANES),
                sal=by_blocks(torch.from_numpy(sal.view(np.int16)), LANES).view(np.uint16),   # (torch lacks uint16 ops)
                groups=groups, pos_bits=pos_bits, n_codes=1 << hb, shape=(out, n_in))


@cpu_kernel(parallel=True, cache=True)
def _repack(state, high, table, layout, hb, pos_bits, groups, signs, sal):
    """The file's per-weight states (trits: 0 = μ−α, 1 = μ+α, 2 = salient; signs: bits; grid: all salient) and
    codes -> sign bits and (code << pos_bits | position) entries, one row per parallel step. Returns -1, or
    row · ng + row-group of the first row-group whose salient count is not k (in a row that came first).
    Branch-free where the states decide (they are random: a branch on them mispredicts half the time)."""
    rows, ng = signs.shape[0], table.shape[0]
    bad = np.full(rows, -1, np.int64)
    for r in numba.prange(rows):
        position = np.empty(table[:, 1].max() + 1, np.int64)
        for g in range(ng):
            w, state_at, high_at, k = table[g, 1], table[g, 2], table[g, 3], table[g, 4]
            sign_at, sal_at = groups[g, 2], groups[g, 4]
            n, v, byte = 0, 0, 0
            for j in range(w):
                if layout == 0:                      # five base-3 digits per byte, least significant first
                    if j % 5 == 0:
                        v = np.int64(state[r, state_at + j // 5])
                    d = v % 3
                    v //= 3
                elif layout == 1:
                    d = (np.int64(state[r, state_at + j // 8]) >> (j % 8)) & 1
                else:
                    d = 2
                byte |= np.int64(d == 1) << (j % 8)
                if j % 8 == 7 or j == w - 1:
                    if layout != 2:
                        signs[r, sign_at + j // 8] = byte
                    byte = 0
                position[min(n, w)] = j              # compaction: kept only if salient
                n += np.int64(d == 2)
            if n != k:
                bad[r] = g if bad[r] < 0 else bad[r]
            for i in range(min(n, k)):
                code = 0
                for q in range(hb):                  # bit i·hb + q of the row-group's code stream
                    bit = i * hb + q
                    code |= ((np.int64(high[r, high_at + bit // 8]) >> (bit % 8)) & 1) << q
                sal[r, sal_at + i] = (code << pos_bits) | position[i]
    for r in range(rows):
        if bad[r] >= 0:
            return r * ng + bad[r]
    return -1


# The kernels' innermost loops, in LLVM IR (opaque pointers, as numba ≥ 0.68's llvmlite reads them), called from
# numba through the intrinsics below. `acc` holds 16 floats, one per lane (= output row of the block), loaded at
# entry and stored back at exit:
#   sq10_plus(T, signs, n, acc):  acc[l] += Σ_{b<n} T[256·b + signs[16·b + l]]             (T: n rows of 256)
#   sq10_salient(x, sal, k, pos_bits, acc): with e = sal[16·i + l], p = e & (2^pos_bits − 1), c = e >> pos_bits,
#                                 acc[l] += Σ_{i<k} c·x[p],  acc[16 + l] += Σ_{i<k} x[p]
#   sq10_expand(signs, w, const, dst, stride):   the tile path's decoding of the binary weights, 16 rows at once:
#                                 dst[j·stride + l] = const[16 + l] + const[l]·(bit j of row l),   j < w
# The two gather loops also prefetch their stream a few row-groups ahead (2 KB of sign bytes, 4 KB of entries;
# a prefetch never faults, so running past the end is harmless): with the weights coming from DRAM, as they do
# in a model, that took the 11008×4096 product from 3.4 to 2.2 ms here — the gathers otherwise leave the
# hardware prefetchers behind. The T rows and the activations they gather from stay in L1/L2.
_ALL = "<" + ", ".join(["i1 true"] * 16) + ">"
_LOOPS_IR = r"""
declare <16 x float> @llvm.masked.gather.v16f32.v16p0(<16 x ptr>, i32 immarg, <16 x i1>, <16 x float>)
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare void @llvm.prefetch.p0(ptr, i32 immarg, i32 immarg, i32 immarg)
@llvm.used = appending global [3 x ptr] [ptr @sq10_plus, ptr @sq10_salient, ptr @sq10_expand],
                            section "llvm.metadata"

define linkonce_odr void @sq10_plus(ptr %T, ptr %signs, i64 %n, ptr %acc) alwaysinline {
entry:
  %a0 = load <16 x float>, ptr %acc, align 4
  %none = icmp eq i64 %n, 0
  br i1 %none, label %done, label %loop
loop:
  %b = phi i64 [0, %entry], [%b1, %loop]
  %a = phi <16 x float> [%a0, %entry], [%a1, %loop]
  %at = mul i64 %b, 16
  %bytep = getelementptr i8, ptr %signs, i64 %at
  %bytes = load <16 x i8>, ptr %bytep, align 1
  %bytepf = getelementptr i8, ptr %bytep, i64 2048
  call void @llvm.prefetch.p0(ptr %bytepf, i32 0, i32 3, i32 1)
  %index = zext <16 x i8> %bytes to <16 x i32>
  %rowat = mul i64 %b, 256
  %row = getelementptr float, ptr %T, i64 %rowat
  %ptrs = getelementptr float, ptr %row, <16 x i32> %index
  %sums = call <16 x float> @llvm.masked.gather.v16f32.v16p0(<16 x ptr> %ptrs, i32 4, <16 x i1> ALL,
                                                             <16 x float> poison)
  %a1 = fadd <16 x float> %a, %sums
  %b1 = add i64 %b, 1
  %more = icmp ult i64 %b1, %n
  br i1 %more, label %loop, label %done
done:
  %r = phi <16 x float> [%a0, %entry], [%a1, %loop]
  store <16 x float> %r, ptr %acc, align 4
  ret void
}

define linkonce_odr void @sq10_salient(ptr %x, ptr %sal, i64 %k, i32 %pos_bits, ptr %acc) alwaysinline {
entry:
  %pb0 = insertelement <16 x i32> poison, i32 %pos_bits, i64 0
  %pb = shufflevector <16 x i32> %pb0, <16 x i32> poison, <16 x i32> zeroinitializer
  %top = shl i32 1, %pos_bits
  %m = sub i32 %top, 1
  %mask0 = insertelement <16 x i32> poison, i32 %m, i64 0
  %mask = shufflevector <16 x i32> %mask0, <16 x i32> poison, <16 x i32> zeroinitializer
  %sxp = getelementptr float, ptr %acc, i64 16
  %c0 = load <16 x float>, ptr %acc, align 4
  %s0 = load <16 x float>, ptr %sxp, align 4
  %none = icmp eq i64 %k, 0
  br i1 %none, label %done, label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %c = phi <16 x float> [%c0, %entry], [%c1, %loop]
  %s = phi <16 x float> [%s0, %entry], [%s1, %loop]
  %at = mul i64 %i, 16
  %ep = getelementptr i16, ptr %sal, i64 %at
  %e16 = load <16 x i16>, ptr %ep, align 2
  %epf = getelementptr i8, ptr %ep, i64 4096
  call void @llvm.prefetch.p0(ptr %epf, i32 0, i32 3, i32 1)
  %e = zext <16 x i16> %e16 to <16 x i32>
  %pos = and <16 x i32> %e, %mask
  %code = lshr <16 x i32> %e, %pb
  %ptrs = getelementptr float, ptr %x, <16 x i32> %pos
  %xs = call <16 x float> @llvm.masked.gather.v16f32.v16p0(<16 x ptr> %ptrs, i32 4, <16 x i1> ALL,
                                                           <16 x float> poison)
  %codef = uitofp <16 x i32> %code to <16 x float>
  %cx = fmul <16 x float> %codef, %xs
  %c1 = fadd <16 x float> %c, %cx
  %s1 = fadd <16 x float> %s, %xs
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, %k
  br i1 %more, label %loop, label %done
done:
  %rc = phi <16 x float> [%c0, %entry], [%c1, %loop]
  %rs = phi <16 x float> [%s0, %entry], [%s1, %loop]
  store <16 x float> %rc, ptr %acc, align 4
  store <16 x float> %rs, ptr %sxp, align 4
  ret void
}
define linkonce_odr void @sq10_expand(ptr %signs, i64 %w, ptr %const, ptr %dst, i64 %stride) alwaysinline {
entry:
  %a = load <16 x float>, ptr %const, align 4
  %lowp = getelementptr float, ptr %const, i64 16
  %low = load <16 x float>, ptr %lowp, align 4
  %none = icmp eq i64 %w, 0
  br i1 %none, label %done, label %loop
loop:
  %j = phi i64 [0, %entry], [%j1, %loop]
  %byte = lshr i64 %j, 3
  %at = mul i64 %byte, 16
  %bytep = getelementptr i8, ptr %signs, i64 %at
  %bytes = load <16 x i8>, ptr %bytep, align 1
  %t = and i64 %j, 7
  %t8 = trunc i64 %t to i8
  %tv0 = insertelement <16 x i8> poison, i8 %t8, i64 0
  %tv = shufflevector <16 x i8> %tv0, <16 x i8> poison, <16 x i32> zeroinitializer
  %shifted = lshr <16 x i8> %bytes, %tv
  %bit = trunc <16 x i8> %shifted to <16 x i1>
  %bitf = uitofp <16 x i1> %bit to <16 x float>
  %v = call fast <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %bitf, <16 x float> %low)
  %rowat = mul i64 %j, %stride
  %rowp = getelementptr float, ptr %dst, i64 %rowat
  store <16 x float> %v, ptr %rowp, align 4
  %j1 = add i64 %j, 1
  %more = icmp ult i64 %j1, %w
  br i1 %more, label %loop, label %done
done:
  ret void
}
""".replace("ALL", _ALL)


def _link_ir(context):
    """Put _LOOPS_IR into the library numba is building (once per library: numba links each compiled function's
    code into one; the cache stores the result as machine code)."""
    from llvmlite import binding as llvm
    library = context.active_code_library
    if not getattr(library, "_sq10_loops", False):
        library.add_llvm_module(llvm.parse_assembly(_LOOPS_IR))
        for isa, ir in _NIBBLE_IR.items():             # version 2's: the stub where the CPU lacks the instructions
            library.add_llvm_module(llvm.parse_assembly(ir if isa in cpu_isas() else _NIBBLE_STUBS[isa]))
        library._sq10_loops = True


def _ir_call(name: str, params: tuple, *args):
    """The typing and code generation of a numba intrinsic that calls _LOOPS_IR's function `name`, for argument
    types `args`. One entry of `params` per IR argument: "i32" or "i64", an integer; "f32", a float; or a numpy
    dtype name, an array of it (C-contiguous) which the caller follows with a flat element offset: the IR gets a
    pointer to that element. None (no match) when an array is of another kind."""
    scalars = {"i32": numba.types.int32, "i64": numba.types.int64, "f32": numba.types.float32}
    at = 0
    for p in params:
        if p not in scalars:
            a = args[at]
            if not (isinstance(a, numba.types.Array) and a.dtype == getattr(numba.types, p) and a.layout == "C"):
                return None
            at += 1
        at += 1

    def codegen(context, builder, sig, values):
        from llvmlite import ir as llvm_ir
        _link_ir(context)
        ir_args, at = [], 0
        for p in params:
            if p in scalars:
                ir_args.append(context.cast(builder, values[at], sig.args[at], scalars[p]))
            else:
                data = context.make_array(sig.args[at])(context, builder, values[at]).data
                at += 1
                ir_args.append(builder.gep(data, [context.cast(builder, values[at], sig.args[at], numba.types.int64)]))
            at += 1
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [v.type for v in ir_args])
        builder.call(numba.core.cgutils.get_or_insert_function(builder.module, fnty, name), ir_args)
        return context.get_dummy_value()
    return numba.types.void(*args), codegen


def _define_intrinsics():
    """The three IR loops as numba intrinsics, module globals like the kernels that call them (load_numba)."""
    global _plus_sums, _salient_sums, _expand_signs

    @numba.extending.intrinsic
    def _plus_sums(typingctx, T, t_at, signs, s_at, n, acc, a_at):
        """acc.flat[a_at + lane] += Σ_{b<n} T.flat[t_at + 256·b + signs.flat[s_at + 16·b + lane]]."""
        return _ir_call("sq10_plus", ("float32", "uint8", "i64", "float32"), T, t_at, signs, s_at, n, acc, a_at)

    @numba.extending.intrinsic
    def _salient_sums(typingctx, x, x_at, sal, s_at, k, pos_bits, acc, a_at):
        """acc.flat[a_at + lane] += Σ_{i<k} code·x, acc.flat[a_at + 16 + lane] += Σ_{i<k} x, over the entries
        sal.flat[s_at + 16·i + lane], the activation of an entry being x.flat[x_at + position]."""
        return _ir_call("sq10_salient", ("float32", "uint16", "i64", "i32", "float32"),
                        x, x_at, sal, s_at, k, pos_bits, acc, a_at)

    @numba.extending.intrinsic
    def _expand_signs(typingctx, signs, s_at, w, const, c_at, dst, d_at, stride):
        """dst.flat[d_at + j·stride + lane] = μ−α + 2α·(bit j), j < w, for the 16 rows of one block
        (const.flat[c_at:] holds 2α then μ−α, 16 each)."""
        return _ir_call("sq10_expand", ("uint8", "i64", "float32", "float32", "i64"),
                        signs, s_at, w, const, c_at, dst, d_at, stride)


# The same three loops in plain numba, the yardstick for the IR: the same arguments, the same arithmetic in the
# same order, hence the same bits (tests/test_kernels.py checks it). fastmath=False is stated on purpose: numba
# gives a callee its caller's fastmath unless the callee says otherwise, and LLVM would then fuse the multiply
# and add into an FMA (other bits). One switch chooses: IR_LOOPS (SQUEEZE10_PLAIN_KERNELS=1 for these). The
# kernels take it as an argument, so both versions are compiled into each and a test can run both.
IR_LOOPS = os.environ.get("SQUEEZE10_PLAIN_KERNELS") != "1"


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _plus_sums_plain(T, t_at, signs, s_at, n, acc, a_at):
    T, signs = T.reshape(-1), signs.reshape(-1)                  # flat views: the offsets are flat
    for b in range(n):
        for lane in range(LANES):
            byte = signs[s_at + LANES * b + lane]
            acc[a_at + lane] += T[t_at + 256 * b + byte]


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _salient_sums_plain(x, x_at, sal, s_at, k, pos_bits, acc, a_at):
    sal = sal.reshape(-1)
    mask = (1 << pos_bits) - 1
    for i in range(k):
        for lane in range(LANES):
            e = np.int64(sal[s_at + LANES * i + lane])
            xv = x[x_at + (e & mask)]
            acc[a_at + lane] += np.float32(e >> pos_bits) * xv
            acc[a_at + LANES + lane] += xv


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _expand_signs_plain(signs, s_at, w, const, c_at, dst, d_at, stride):
    signs, const, dst = signs.reshape(-1), const.reshape(-1), dst.reshape(-1)
    for j in range(w):
        for lane in range(LANES):
            bit = (signs[s_at + LANES * (j >> 3) + lane] >> (j & 7)) & 1
            dst[d_at + j * stride + lane] = const[c_at + LANES + lane] + const[c_at + lane] * np.float32(bit)


@cpu_kernel(fastmath=True, cache=True)
def _fill_tables(x, col, w, nbytes, T, t0):
    """The tables of one row-group of one row x (in,) into T rows t0 .. t0 + nbytes: T[t0 + p, v] = Σ of the
    activations x[col + 8p + t] whose bit t is set in v (0 past the width w). Both versions' tables."""
    for p in range(nbytes):
        for t in range(8):                           # doubling: the entries with bit t set = those below + x_t
            j = 8 * p + t
            xv = x[col + j] if j < w else np.float32(0)
            h = 1 << t
            for i in range(h):
                T[t0 + p, h + i] = T[t0 + p, i] + xv


@cpu_kernel(parallel=True, fastmath=True, cache=True)
def _tables(x, groups, g0, g1):
    """Per call, from one row x (in,), for row-groups g0 .. g1: T (sign bytes, 256): T[b, byte] = Σ of the
    activations whose bits are set in `byte`, among the 8 columns sign byte b covers; and X (groups,): each
    row-group's Σ x."""
    base = groups[g0, 2]
    T = np.zeros((groups[g1 - 1, 3] - base, 256), np.float32)
    X = np.zeros(g1 - g0, np.float32)
    for g in numba.prange(g0, g1):
        col, w, b0, b1 = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3]
        for j in range(w):
            X[g - g0] += x[col + j]
        _fill_tables(x, col, w, b1 - b0, T, b0 - base)
    return T, X


@cpu_kernel(parallel=True, fastmath=True, cache=True)
def _gemv(x, T, X, g0, g1, signs, sal, const, groups, pos_bits, y, ir):
    """y (blocks·LANES,) += the part of W @ x from row-groups g0 .. g1, for one row x (in,); one block of 16
    output channels per parallel step. ir: the IR loops, or their plain twins."""
    blocks, L = signs.shape[0], LANES
    n_sign, n_sal = signs.shape[1], sal.shape[1]
    base = groups[g0, 2]
    for r in numba.prange(blocks):
        plus = np.empty(L, np.float32)       # per lane: Σ x over the μ+α weights,
        sums = np.empty(2 * L, np.float32)   # Σ code·x and Σ x over the salient ones
        acc = np.zeros(L, np.float32)
        for g in range(g0, g1):
            col, b0, b1, s0, k = groups[g, 0], groups[g, 2], groups[g, 3], groups[g, 4], groups[g, 5]
            plus[:] = 0
            sums[:] = 0
            if ir:
                _plus_sums(T, (b0 - base) * 256, signs, (r * n_sign + b0) * L, b1 - b0, plus, 0)
                _salient_sums(x, col, sal, (r * n_sal + s0) * L, k, pos_bits, sums, 0)
            else:
                _plus_sums_plain(T, (b0 - base) * 256, signs, (r * n_sign + b0) * L, b1 - b0, plus, 0)
                _salient_sums_plain(x, col, sal, (r * n_sal + s0) * L, k, pos_bits, sums, 0)
            for lane in range(L):
                acc[lane] += (const[r, g, 0, lane] * plus[lane] + const[r, g, 1, lane] * X[g - g0]
                              + const[r, g, 2, lane] * sums[lane] - const[r, g, 3, lane] * sums[L + lane])
        for lane in range(L):
            y[r * L + lane] += acc[lane]


@cpu_kernel(parallel=True, fastmath=True, cache=True)
def _decode_tile(signs, sal, const, groups, pos_bits, r0, WT, ir):
    """Blocks r0, r0+1, ... of the weight decoded, transposed, into the float32 tile WT (in, cols): column c of
    WT is row r0·LANES + c of the weight. Transposed so that a block's 16 rows are 16 adjacent floats: the
    binary weights go in as one 16-wide store per column (sq10_expand), the salient ones one by one."""
    ng, L = groups.shape[0], LANES
    n_sign, ng4, cols = signs.shape[1], 4 * groups.shape[0], WT.shape[1]
    pmask = (1 << pos_bits) - 1
    for rb in numba.prange(cols // L):
        r, c0 = r0 + rb, rb * L
        for g in range(ng):
            col, w, b0, b1, s0, k = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3], groups[g, 4], groups[g, 5]
            if b1 > b0 and ir:
                _expand_signs(signs, (r * n_sign + b0) * L, w, const, (r * ng4 + 4 * g) * L, WT, col * cols + c0, cols)
            elif b1 > b0:
                _expand_signs_plain(signs, (r * n_sign + b0) * L, w, const, (r * ng4 + 4 * g) * L, WT,
                                    col * cols + c0, cols)
            for q in range(s0, s0 + k):
                for lane in range(L):
                    e = np.int64(sal[r, q, lane])
                    WT[col + (e & pmask), c0 + lane] = (const[r, g, 2, lane] * np.float32(e >> pos_bits)
                                                        - (const[r, g, 3, lane] - const[r, g, 1, lane]))


def numba_matmul(x: torch.Tensor, lay: dict, ir: bool | None = None) -> torch.Tensor:
    """y = x @ Wᵀ on the CPU for a linear repacked by `cpu_layout`; x (..., in), any float dtype. ir: the IR
    loops or their plain twins (default IR_LOOPS)."""
    out, n_in = lay["shape"]
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {n_in}")
    x2 = x.reshape(-1, n_in).to(torch.float32).contiguous()
    M, blocks = x2.shape[0], lay["signs"].shape[0]
    args = lay["signs"], lay["sal"], lay["const"], lay["groups"], lay["pos_bits"]
    ir = IR_LOOPS if ir is None else ir
    if M <= (BIG_LAYER_BATCH if out * n_in >= 1 << 24 else SMALL_BATCH):   # one row of x at a time
        y = np.zeros((M, blocks * LANES), np.float32)
        ng = len(lay["groups"])
        chunks = -(-ng // CHUNK_GROUPS)              # equal chunks, so that each one's tables stay in L2
        bounds = [(c * ng // chunks, (c + 1) * ng // chunks) for c in range(chunks)]
        for m, xm in enumerate(x2.numpy()):
            for g0, g1 in bounds:
                T, X = _tables(xm, lay["groups"], g0, g1)
                _gemv(xm, T, X, g0, g1, *args, y[m], ir)
        y = torch.from_numpy(y[:, :out])
    else:
        y = torch.empty(M, out)
        step = max(1, TILE_BYTES // (4 * n_in * LANES))               # blocks per tile
        tile = torch.empty(n_in, min(step, blocks) * LANES)
        for r0 in range(0, blocks, step):
            n0, n1 = r0 * LANES, min(out, (r0 + step) * LANES)
            nb = min(step, blocks - r0)
            WT = tile if nb * LANES == tile.shape[1] else torch.empty(n_in, nb * LANES)     # the last, narrower one
            _decode_tile(*args, r0, WT.numpy(), ir)
            y[:, n0:n1] = x2 @ WT[:, :n1 - n0]
    return y.to(x.dtype).reshape(*x.shape[:-1], out)


# -----------------------------------------------------------------------------
# numba (CPU), version 2 (the columns layout): the same product for `dequantize_columns`' weights
#
# With the salient columns shared by a block of rows, the product of row r (in row-block b) with x splits, per
# row-group g of original columns, into sums that need no gather per weight:
#   binary   Σ_{j∈B∩g} (μ + α·c_j·s_j)·x_j
#              = μ·Σ_{B∩g} x + α·(2·Σ_{B∩g,s=+1} c_j·x_j − Σ_{B∩g} c_j·x_j)
#   salient  Σ_{i∈S∩g} scale·(code_i − zero)·x_i = scale·Σ_{S∩g} code_i·x_i − scale·zero·Σ_{S∩g} x
# (B, S: the block's binary and salient columns; c_j: the column scales, 1 without them; s_j = ±1.)
#  - Σ over s_j = +1 by nibble tables (T-MAC): each row's sign bits are spread back over all input columns in
#    their original order (0 at the salient ones), so one table set per call serves every row of the layer:
#    for each quad of 4 columns, T[v] = Σ of c_j·x_j over the bits set in v, 16 entries. One lookup per 4 weights.
#  - Σ_{S∩g} code·x: the block's codes times its gathered salient activations, 32 rows at a time.
#  - The sums over B come from the row-group's Σ x and Σ c·x less the salient ones', once per record.
#
# The in-memory layout (`columns_cpu_layout`, made once at load). Rows go in lane blocks of 32 (a row-block of R
# rows is cut into ceil(R/32) of them; the rows past R are zeros), and each (lane block, row-group) is one record
# of contiguous bytes, so that a thread reads its lane blocks as one stream:
#
#   struct record {                               // 16-byte aligned; nq = ceil(w/4) quads, n salient columns
#       bf16|fp32 const[4][32];   // α, μ, scale, scale·zero of the 32 rows: bf16 where every value of the linear
#                                 //   survives the round trip (fp8 parameters do, and their scale·zero), else fp32
#       uint8 signs[nq][16];      // quad q (columns 4q .. 4q+3 of the row-group): byte t holds row t's four sign
#                                 //   bits in its low nibble, row 16+t's in its high one; bit u set: column 4q+u is
#                                 //   binary with s = +1 (0: s = −1, or salient)
#       uint8 codes[n][planes][16];   // the salient columns' codes, nibble plane p = bits 4p .. 4p+3, bytes as the
#                                 //   signs' (planes: 1 for codes of up to 4 bits, 2 up to 8)
#       uint16 cols[n];           // the salient columns, ascending
#   };
#
# At the default preset (R 32, G 128, k = 0.2·in, 4 bits, fp8): 256 + 512 + 410 + 51 bytes per 4096 weights,
# 2.4 bits a weight, against the file's 1.9 (which stores signs only for the binary columns, and fp8 constants)
# and the previous layout's 3.6 (a code per byte, fp32 constants, int64 columns).
#
# The fast path (LLVM IR below, `sq10_nibbles…`, `sq10_codes…`) keeps 32 rows' sums in registers and looks a quad
# up for 32 rows with four byte shuffles (vpshufb: the table's 16 entries sit in a register, the 32 nibbles are
# the indices). A shuffle returns bytes, so each fp32 table is stored as 4 byte planes (byte k of every entry);
# the four shuffled planes are interleaved back into exact fp32 values: the tables stay exact, the sums are the
# plain twin's to the bit. The IR needs AVX2 (AVX-512 CPUs have it): elsewhere the plain twins run (and say so
# once). Up to COLUMNS_TABLE_BATCH rows of x share each record's load, one table set per activation row; on
# AVX-512 the loops take 4 rows of x at a time (BATCH_ROWS), so that each quad's nibbles and each column's codes
# are unpacked once for the four; larger batches (prefill, perplexity) decode tiles of rows to float32 and
# multiply by BLAS, as version 1 does.

COLUMNS_TABLE_BATCH = 16   # up to this many rows of x: the table kernel; above: decoded tiles and BLAS
TABLE_BYTES = 256 << 10    # the tables (byte planes) of one pass over row-groups: at most this many bytes, in L2
ROWS = 32                  # rows per lane block: one byte shuffle of 32 nibbles (the IR is written for 32)
BATCH_ROWS = 4             # rows of x per call of the AVX-512 loops: each nibble and code unpacked once for them


@dataclass
class ColumnsLayout:
    """One columns-layout linear (or several with the same input, `fuse_columns`) repacked for the numba
    kernels by `columns_cpu_layout`, once at load."""
    data: np.ndarray       # uint8 (bytes,): the records, lane block after lane block, row-group after row-group
    at: np.ndarray         # int64 (lane blocks, ng): where each record starts in data (a multiple of 16)
    count: np.ndarray      # int64 (lane blocks, ng): its salient columns
    part: np.ndarray       # int64 (lane blocks,): which linear the lane block belongs to (0 but in fused layouts)
    colscale: np.ndarray   # float32 (linears, in): c_j of each linear (ones without column scales)
    wide: np.ndarray       # int64 (linears,): 1 if its constants are fp32, 0 if bf16
    planes: np.ndarray     # int64 (linears,): nibble planes of a code
    groups: np.ndarray     # int64 (ng, 4): first column, width, first quad, quads
    outputs: list          # per linear, int64 (out,): where its rows sit among the lane blocks' 32·L rows
    shape: tuple           # (Σ out, in)

    def __post_init__(self):   # each linear's rows: (first, count) where they are consecutive (the rule), or None
        self.spans = [(int(o[0]), len(o)) if np.array_equal(o, np.arange(o[0], o[0] + len(o))) else None
                      for o in self.outputs]

    def nbytes(self) -> int:
        """The bytes a product reads of the layout (the tables and x come on top: in cache)."""
        return self.data.nbytes + self.at.nbytes + self.count.nbytes


ISAS = ("plain", "avx2", "avx512")   # version 2's lookups: plain numba, byte shuffles (AVX2), fp32 permutes (AVX-512)


def cpu_isas() -> tuple:
    """The lookups numba can compile for its target CPU (NUMBA_CPU_FEATURES, else this machine's features):
    "plain" always, "avx2" and "avx512" where the CPU has AVX2 / AVX-512F. An IR loop whose instructions the
    target lacks is linked as a stub (an x86 intrinsic would not compile), never called. Asked once."""
    global _CPU_ISAS
    if _CPU_ISAS is None:
        from llvmlite import binding
        load_numba()
        features = (numba.config.CPU_FEATURES or binding.get_host_cpu_features().flatten()).split(",")
        _CPU_ISAS = tuple(isa for isa, flag in zip(ISAS, ("", "+avx2", "+avx512f")) if not flag or flag in features)
    return _CPU_ISAS


_CPU_ISAS = None
_SAID = set()   # the notices already printed (each one once per process)


def nibble_isa() -> str:
    """Version 2's default lookups: the widest the CPU has ("plain" with SQUEEZE10_PLAIN_KERNELS=1). Where the
    CPU has neither AVX2 nor AVX-512 the plain twins run, and say so once."""
    if not IR_LOOPS:
        return "plain"
    isas = cpu_isas()
    if isas == ("plain",) and "plain" not in _SAID:
        _SAID.add("plain")
        print("kernels.py: this CPU has no AVX2: version 2's table lookups run their plain numba twins (slower, "
              "the same bits)", file=sys.stderr)
    return isas[-1]


def columns_cpu_layout(tensors: dict, spec: dict) -> ColumnsLayout:
    """Repack a columns-layout linear (the file's tensors, checked) into records (above)."""
    codes, mask, mu, alpha, scale, zero, colscale = unpack_columns(tensors, spec)   # k columns a row-block: checked
    out, n_in = spec["shape"]
    G, R, hb = spec["group_size"], spec["block_rows"], spec["high_bits"]
    if n_in > 1 << 16:
        raise ValueError(f"{n_in} input columns do not fit the numba layout's 16-bit column indices")
    widths = np.array(group_widths(n_in, G))
    quads = -(-widths // 4)
    groups = np.stack([np.arange(len(widths)) * G, widths, np.cumsum(quads) - quads, quads], 1).astype(np.int64)
    # lane blocks: row-block b's rows b·R + 32·i + t; past the row-block or the layer, the zero row `out`
    per_block = -(-R // ROWS)
    rowblock = np.repeat(np.arange(column_blocks(spec)), per_block)                      # (L,)
    within = (np.arange(len(rowblock)) % per_block)[:, None] * ROWS + np.arange(ROWS)    # (L, 32)
    rows = rowblock[:, None] * R + within
    real = (within < R) & (rows < out)
    rows = np.where(real, rows, out)
    salient = mask[::R].numpy()                                                          # (row-blocks, in)
    bounds = np.append(groups[:, 0], n_in)
    through = np.concatenate([np.zeros((len(salient), 1), np.int64), salient.cumsum(1)], 1)
    count = np.diff(through[:, bounds], axis=1)[rowblock]                                # (L, ng)
    const = torch.stack([alpha, mu, scale, scale * zero], -1)                            # (out, ng, 4)
    wide = not torch.equal(const.bfloat16().float(), const)
    planes = 1 if hb <= 4 else 2
    size = (512 if wide else 256) + 16 * quads + (16 * planes + 2) * count
    size = -(-size // 16) * 16
    at = (np.cumsum(size) - size.reshape(-1)).reshape(size.shape)
    zero_row = torch.zeros(1, n_in, dtype=torch.uint8)
    plus = torch.cat([((codes == 1) & ~mask).to(torch.uint8), zero_row]).numpy()
    code8 = torch.cat([torch.where(mask, codes, 0).to(torch.uint8), zero_row]).numpy()
    const_bits = torch.cat([const, torch.zeros(1, *const.shape[1:])]).numpy().view(np.uint32)
    data = np.zeros(int(size.sum()), np.uint8)
    _fill_records(plus, code8, salient, rowblock, rows, const_bits, groups, at, count, int(wide), planes, data)
    place = np.zeros(out, np.int64)
    place[rows[real]] = np.flatnonzero(real)
    colscale = torch.ones(n_in) if colscale is None else colscale
    return ColumnsLayout(data=data, at=at, count=count, part=np.zeros(len(rowblock), np.int64),
                         colscale=colscale.numpy().astype(np.float32)[None], wide=np.array([int(wide)]),
                         planes=np.array([planes]), groups=groups, outputs=[place], shape=(out, n_in))


@cpu_kernel(parallel=True, cache=True)
def _fill_records(plus, codes, salient, rowblock, rows, const_bits, groups, at, count, wide, planes, data):
    """The records of every lane block (above), one lane block per parallel step. plus, codes (out + 1, in)
    uint8: s = +1 at binary columns, the code at salient ones (row `out`: zeros, the padding)."""
    data16, data32 = data.view(np.uint16), data.view(np.uint32)
    for lb in numba.prange(at.shape[0]):
        for g in range(groups.shape[0]):
            col, w, nq, rec = groups[g, 0], groups[g, 1], groups[g, 3], at[lb, g]
            for k in range(4):                       # α, μ, scale, scale·zero: fp32, or its high half (bf16)
                for t in range(ROWS):
                    bits = const_bits[rows[lb, t], g, k]
                    if wide:
                        data32[rec // 4 + ROWS * k + t] = bits
                    else:
                        data16[rec // 2 + ROWS * k + t] = bits >> 16
            s_at = rec + (512 if wide else 256)
            for q in range(nq):                      # quad q: row t's sign bits low, row 16 + t's high
                for t in range(16):
                    lo, hi = 0, 0
                    for u in range(min(4, w - 4 * q)):
                        lo |= np.int64(plus[rows[lb, t], col + 4 * q + u]) << u
                        hi |= np.int64(plus[rows[lb, 16 + t], col + 4 * q + u]) << u
                    data[s_at + 16 * q + t] = lo | (hi << 4)
            c_at = s_at + 16 * nq
            k_at = c_at + 16 * planes * count[lb, g]
            i = 0
            for j in range(col, col + w):
                if salient[rowblock[lb], j]:
                    for p in range(planes):          # nibble plane p: bits 4p .. 4p+3 of each row's code
                        for t in range(16):
                            lo = (np.int64(codes[rows[lb, t], j]) >> (4 * p)) & 15
                            hi = (np.int64(codes[rows[lb, 16 + t], j]) >> (4 * p)) & 15
                            data[c_at + 16 * (planes * i + p) + t] = lo | (hi << 4)
                    data16[k_at // 2 + i] = j
                    i += 1


def fuse_columns(layouts: list) -> ColumnsLayout:
    """Several one-linear layouts with the same input and row-groups (wq|wk|wv, w1|w3) as one: their records one
    after the other, so that one call computes them all (one table set per linear, one parallel region)."""
    first = layouts[0]
    if any(len(lay.outputs) != 1 or lay.shape[1] != first.shape[1] or not np.array_equal(lay.groups, first.groups)
           for lay in layouts):
        raise ValueError("fused linears must be single linears sharing their input width and row-groups")
    base = np.cumsum([0] + [lay.data.nbytes for lay in layouts])
    blocks = np.cumsum([0] + [len(lay.at) for lay in layouts])
    return ColumnsLayout(
        data=np.concatenate([lay.data for lay in layouts]),
        at=np.concatenate([lay.at + b for lay, b in zip(layouts, base)]),
        count=np.concatenate([lay.count for lay in layouts]),
        part=np.concatenate([np.full(len(lay.at), i, np.int64) for i, lay in enumerate(layouts)]),
        colscale=np.concatenate([lay.colscale for lay in layouts]),
        wide=np.concatenate([lay.wide for lay in layouts]), planes=np.concatenate([lay.planes for lay in layouts]),
        groups=first.groups, outputs=[lay.outputs[0] + ROWS * b for lay, b in zip(layouts, blocks)],
        shape=(sum(lay.shape[0] for lay in layouts), first.shape[1]))


def fused_part(fused: ColumnsLayout, i: int) -> ColumnsLayout:
    """Linear i of a fused layout as a layout of its own, its records a view into the fused bytes (no copy)."""
    blocks = np.flatnonzero(fused.part == i)
    l0, l1 = blocks[0], blocks[-1] + 1
    b0 = fused.at[l0, 0]
    b1 = fused.at[l1, 0] if l1 < len(fused.at) else fused.data.nbytes
    return ColumnsLayout(data=fused.data[b0:b1], at=fused.at[l0:l1] - b0, count=fused.count[l0:l1],
                         part=np.zeros(l1 - l0, np.int64), colscale=fused.colscale[i:i + 1],
                         wide=fused.wide[i:i + 1], planes=fused.planes[i:i + 1], groups=fused.groups,
                         outputs=[fused.outputs[i] - ROWS * l0], shape=(len(fused.outputs[i]), fused.shape[1]))


# The nibble tables: built once per call from x, for every linear of the layout (its column scales) and every
# row of x. The plain twins and the AVX-512 loop read the fp32 entries, the AVX2 loop their byte planes.

@cpu_kernel(fastmath=False, cache=True)
def _nibble_tables(x, colscale, groups, byte_planes, xc, X, T, planes):
    """For linear p, row m of x (M, in): xc[p, m] = x[m]·c_p; X[p, m, g] = (Σ x, Σ c·x) over row-group g;
    T[p, m, quad, v] = Σ of xc over the columns of the quad whose bit is set in v (0 past the row-group's width);
    if byte_planes, planes[p, m, quad, k, v] = byte k of T[p, m, quad, v]."""
    bits = T.view(np.uint32)
    for p in range(colscale.shape[0]):
        for m in range(x.shape[0]):
            for g in range(groups.shape[0]):
                col, w, q0, nq = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3]
                sx, scx = np.float32(0), np.float32(0)
                for j in range(col, col + w):
                    xc[p, m, j] = x[m, j] * colscale[p, j]
                    sx += x[m, j]
                    scx += xc[p, m, j]
                X[p, m, g, 0] = sx
                X[p, m, g, 1] = scx
                for q in range(q0, q0 + nq):
                    T[p, m, q, 0] = 0
                    for u in range(4):               # doubling: the entries with bit u set = those below + x_u
                        j = 4 * (q - q0) + u
                        xu = xc[p, m, col + j] if j < w else np.float32(0)
                        h = 1 << u
                        for v in range(h):
                            T[p, m, q, h + v] = T[p, m, q, v] + xu
                    if byte_planes:
                        for v in range(16):
                            for k in range(4):
                                planes[p, m, q, k, v] = (bits[p, m, q, v] >> (8 * k)) & 255


# The inner loops in LLVM IR, beside their plain twins (same arguments, same arithmetic in the same order, hence
# the same bits: tests/test_numba_columns.py checks it). `out` receives rows 0 .. 31 of a lane block, stored
# once at exit (the sums stay in registers):
#   sq10_nibbles{rows}_avx512 and sq10_codes{rows}: below, after the AVX2 loop (written for `rows` rows of x)
#   sq10_nibbles_avx2(planes, signs, nq, out): out[r] = Σ_{q<nq} T_q[nibble of row r in quad q], from the tables'
#                                 byte planes (T_q as 4 planes of 16 bytes at planes + 64q; one vpshufb looks up
#                                 32 rows, for one byte of their entries)
#   sq10_combine(const, plus, dot, bx, bcx, sx, y): y[r] += α·(2·plus[r] − bcx) + μ·bx + scale·dot[r] − scale·zero·sx,
#                                 the record's 32 rows in float32 vectors (plain LLVM, any CPU). In numba, the same
#                                 loop over an array slice stays scalar; done in double (the literal 2 made it one),
#                                 it took a third of the batch-16 time.
# sq10_nibbles_avx2 keeps its sums in four 8-float registers, in the order the byte interleaves leave them (rows
# 0-3 and 16-19, 4-7 and 20-23, 8-11 and 24-27, 12-15 and 28-31) and puts them back in row order once, at exit.

def _ir_vector(values, kind: str = "i32") -> str:
    return "<" + ", ".join(f"{kind} {v}" for v in values) + ">"


def _unpack(elements, other: int) -> str:
    """A two-vector shuffle mask: element i of the first vector, then element i of the second (numbered from
    `other` in the mask), for each i of `elements`."""
    return _ir_vector(v for i in elements for v in (i, other + i))


_IR_CONSTANTS = {   # the names in the IR below; the masks of vpunpck{l,h}{bw,wd} interleave within 128-bit halves
    "LO_BW": _unpack([*range(0, 8), *range(16, 24)], 32),      # bytes 0-7 of each half of a and b, alternately
    "HI_BW": _unpack([*range(8, 16), *range(24, 32)], 32),     # bytes 8-15
    "LO_WD": _unpack([*range(0, 4), *range(8, 12)], 16),       # 16-bit words 0-3 of each half
    "HI_WD": _unpack([*range(4, 8), *range(12, 16)], 16),      # words 4-7
    "BOTH_HALVES": _ir_vector(list(range(16)) * 2),
    "FIRST16": _ir_vector(range(16)),
    "FIRST32": _ir_vector(range(32)),
    # rows 0-3 sit at 0-3, 4-7 at 8-11, 8-11 at 16-19, 12-15 at 24-27, 16-19 at 4-7, 20-23 at 12-15, ...
    "ROW_ORDER": _ir_vector(8 * (r // 4 % 4) + 4 * (r // 16) + r % 4 for r in range(32)),
    "SPLAT15_32": _ir_vector([15] * 16, "i32"),
    "SPLAT4_32": _ir_vector([4] * 16, "i32"),
    "SPLAT15": _ir_vector([15] * 16, "i8"),
    "SPLAT4x32": _ir_vector([4] * 32, "i8"),
    "SPLAT4": _ir_vector([4] * 16, "i8"),
    "SPLAT2F": _ir_vector(["2.0"] * 32, "float"),
}
_NIBBLE_IR = {"plain": r"""
@llvm.used = appending global [3 x ptr] [ptr @sq10_codes1, ptr @sq10_codes4, ptr @sq10_combine], section "llvm.metadata"

define linkonce_odr void @sq10_combine(ptr %const, ptr %plus, ptr %dot, float %bx, float %bcx, float %sx,
                                       ptr %y) alwaysinline {
entry:
  ; the record's constants for the 32 rows: α, μ, scale, scale·zero
  %alpha = load <32 x float>, ptr %const, align 4
  %mu_ptr = getelementptr float, ptr %const, i64 32
  %mu = load <32 x float>, ptr %mu_ptr, align 4
  %scale_ptr = getelementptr float, ptr %const, i64 64
  %scale = load <32 x float>, ptr %scale_ptr, align 4
  %sz_ptr = getelementptr float, ptr %const, i64 96
  %sz = load <32 x float>, ptr %sz_ptr, align 4
  %p = load <32 x float>, ptr %plus, align 4
  %d = load <32 x float>, ptr %dot, align 4
  %yv = load <32 x float>, ptr %y, align 4
  %bx0 = insertelement <32 x float> poison, float %bx, i64 0
  %bxs = shufflevector <32 x float> %bx0, <32 x float> poison, <32 x i32> zeroinitializer
  %bcx0 = insertelement <32 x float> poison, float %bcx, i64 0
  %bcxs = shufflevector <32 x float> %bcx0, <32 x float> poison, <32 x i32> zeroinitializer
  %sx0 = insertelement <32 x float> poison, float %sx, i64 0
  %sxs = shufflevector <32 x float> %sx0, <32 x float> poison, <32 x i32> zeroinitializer
  ; α·(2·plus − bcx) + μ·bx + scale·dot − (scale·zero)·sx, left to right, then added to y
  %twice = fmul <32 x float> SPLAT2F, %p
  %diff = fsub <32 x float> %twice, %bcxs
  %a = fmul <32 x float> %alpha, %diff
  %b = fmul <32 x float> %mu, %bxs
  %c = fmul <32 x float> %scale, %d
  %z = fmul <32 x float> %sz, %sxs
  %ab = fadd <32 x float> %a, %b
  %abc = fadd <32 x float> %ab, %c
  %e = fsub <32 x float> %abc, %z
  %sum = fadd <32 x float> %yv, %e
  store <32 x float> %sum, ptr %y, align 4
  ret void
}
""", "avx2": r"""
declare <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8>, <32 x i8>)
@llvm.used = appending global [1 x ptr] [ptr @sq10_nibbles_avx2], section "llvm.metadata"

define linkonce_odr void @sq10_nibbles_avx2(ptr %planes, ptr %signs, i64 %nq, ptr %out) alwaysinline {
entry:
  %none = icmp eq i64 %nq, 0
  br i1 %none, label %done, label %loop
loop:
  %q = phi i64 [0, %entry], [%q1, %loop]
  %a0 = phi <8 x float> [zeroinitializer, %entry], [%a0n, %loop]
  %a1 = phi <8 x float> [zeroinitializer, %entry], [%a1n, %loop]
  %a2 = phi <8 x float> [zeroinitializer, %entry], [%a2n, %loop]
  %a3 = phi <8 x float> [zeroinitializer, %entry], [%a3n, %loop]
  ; quad q's 16 sign bytes: byte t = row t's nibble (low 4 bits) | row 16+t's (high 4 bits)
  %s_at = mul i64 %q, 16
  %s_ptr = getelementptr i8, ptr %signs, i64 %s_at
  %s = load <16 x i8>, ptr %s_ptr, align 1
  %lo = and <16 x i8> %s, SPLAT15
  %hi = lshr <16 x i8> %s, SPLAT4
  ; byte r of the index vector = row r's table index, r < 32
  %idx = shufflevector <16 x i8> %lo, <16 x i8> %hi, <32 x i32> FIRST32
  ; quad q's table: plane k (byte k of the 16 fp32 entries) at planes + 64q + 16k, copied into both 128-bit
  ; halves of a register (vpshufb looks up within each half: rows 0-15 in the low half, 16-31 in the high)
  %t_at = mul i64 %q, 64
  %p0_ptr = getelementptr i8, ptr %planes, i64 %t_at
  %p1_ptr = getelementptr i8, ptr %p0_ptr, i64 16
  %p2_ptr = getelementptr i8, ptr %p0_ptr, i64 32
  %p3_ptr = getelementptr i8, ptr %p0_ptr, i64 48
  %p0 = load <16 x i8>, ptr %p0_ptr, align 1
  %p1 = load <16 x i8>, ptr %p1_ptr, align 1
  %p2 = load <16 x i8>, ptr %p2_ptr, align 1
  %p3 = load <16 x i8>, ptr %p3_ptr, align 1
  %p0x = shufflevector <16 x i8> %p0, <16 x i8> poison, <32 x i32> BOTH_HALVES
  %p1x = shufflevector <16 x i8> %p1, <16 x i8> poison, <32 x i32> BOTH_HALVES
  %p2x = shufflevector <16 x i8> %p2, <16 x i8> poison, <32 x i32> BOTH_HALVES
  %p3x = shufflevector <16 x i8> %p3, <16 x i8> poison, <32 x i32> BOTH_HALVES
  ; 32 lookups per shuffle: byte k of every row's entry
  %b0 = call <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8> %p0x, <32 x i8> %idx)
  %b1 = call <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8> %p1x, <32 x i8> %idx)
  %b2 = call <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8> %p2x, <32 x i8> %idx)
  %b3 = call <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8> %p3x, <32 x i8> %idx)
  ; bytes 0 and 1 (2 and 3) of a row side by side: 16-bit words, rows 0-7 and 16-23 (l), 8-15 and 24-31 (h)
  %l01 = shufflevector <32 x i8> %b0, <32 x i8> %b1, <32 x i32> LO_BW
  %h01 = shufflevector <32 x i8> %b0, <32 x i8> %b1, <32 x i32> HI_BW
  %l23 = shufflevector <32 x i8> %b2, <32 x i8> %b3, <32 x i32> LO_BW
  %h23 = shufflevector <32 x i8> %b2, <32 x i8> %b3, <32 x i32> HI_BW
  %l01w = bitcast <32 x i8> %l01 to <16 x i16>
  %h01w = bitcast <32 x i8> %h01 to <16 x i16>
  %l23w = bitcast <32 x i8> %l23 to <16 x i16>
  %h23w = bitcast <32 x i8> %h23 to <16 x i16>
  ; the two words of a row side by side: its fp32 entry, bit for bit (x86 is little-endian)
  %w0 = shufflevector <16 x i16> %l01w, <16 x i16> %l23w, <16 x i32> LO_WD
  %w1 = shufflevector <16 x i16> %l01w, <16 x i16> %l23w, <16 x i32> HI_WD
  %w2 = shufflevector <16 x i16> %h01w, <16 x i16> %h23w, <16 x i32> LO_WD
  %w3 = shufflevector <16 x i16> %h01w, <16 x i16> %h23w, <16 x i32> HI_WD
  %f0 = bitcast <16 x i16> %w0 to <8 x float>
  %f1 = bitcast <16 x i16> %w1 to <8 x float>
  %f2 = bitcast <16 x i16> %w2 to <8 x float>
  %f3 = bitcast <16 x i16> %w3 to <8 x float>
  ; rows 0-3 and 16-19 (f0), 4-7 and 20-23 (f1), 8-11 and 24-27 (f2), 12-15 and 28-31 (f3)
  %a0n = fadd <8 x float> %a0, %f0
  %a1n = fadd <8 x float> %a1, %f1
  %a2n = fadd <8 x float> %a2, %f2
  %a3n = fadd <8 x float> %a3, %f3
  %q1 = add i64 %q, 1
  %more = icmp ult i64 %q1, %nq
  br i1 %more, label %loop, label %done
done:
  %r0 = phi <8 x float> [zeroinitializer, %entry], [%a0n, %loop]
  %r1 = phi <8 x float> [zeroinitializer, %entry], [%a1n, %loop]
  %r2 = phi <8 x float> [zeroinitializer, %entry], [%a2n, %loop]
  %r3 = phi <8 x float> [zeroinitializer, %entry], [%a3n, %loop]
  ; back to row order, once
  %r01 = shufflevector <8 x float> %r0, <8 x float> %r1, <16 x i32> FIRST16
  %r23 = shufflevector <8 x float> %r2, <8 x float> %r3, <16 x i32> FIRST16
  %rows = shufflevector <16 x float> %r01, <16 x float> %r23, <32 x i32> ROW_ORDER
  store <32 x float> %rows, ptr %out, align 4
  ret void
}
""", "avx512": r"""
declare <16 x float> @llvm.x86.avx512.permvar.sf.512(<16 x float>, <16 x i32>)
@llvm.used = appending global [2 x ptr] [ptr @sq10_nibbles1_avx512, ptr @sq10_nibbles4_avx512], section "llvm.metadata"
"""}


# Two of the loops are written once for `rows` rows of x (the lines marked {r} are written once per row,
# `_per_row`) and made for 1 row and for BATCH_ROWS: a quad's nibbles and a column's codes are unpacked once and
# serve every row (each row's own table, its own activation); each row's sums are added in the same order as
# with one row, so the bits are the plain twins'. AVX2 takes 1 row only: on its 16 registers, 4 rows' sums
# would spill.
#   sq10_nibbles{rows}_avx512(T, stride, signs, nq, out): out[r] = Σ_{q<nq} T_q[nibble of row r in quad q]
#                                 (T_q: 16 fp32 entries at T + 16q; one vpermps looks up 16 rows), for each row
#                                 of x: its tables at T + row·stride floats, its sums at out + 32·row
#   sq10_codes{rows}(codes, cols, n, np, x, xstride, xc, xcstride, out): out[r] = Σ_{i<n} code(i, r)·x[cols[i]],
#                                 out[32] = Σ_i x[cols[i]], out[33] = Σ_i xc[cols[i]] (np: nibble planes a code;
#                                 plain LLVM, any CPU), for each row of x: its x at x + row·xstride (xc alike),
#                                 its 34 sums at out + 34·row

def _per_row(ir: str, rows: int) -> str:
    """`ir` for `rows` rows of x: {rows} named, and each line that names {r} (or {ar+b}: a·r + b) written once
    per row r < rows, in order."""
    lines = []
    for line in ir.replace("{rows}", str(rows)).split("\n"):
        if not _ROW_NAME.search(line):
            lines.append(line)
            continue
        for r in range(rows):
            lines.append(_ROW_NAME.sub(lambda m: str(int(m[1] or 1) * r + int(m[2] or 0)), line))
    return "\n".join(lines)


_ROW_NAME = re.compile(r"\{(\d*)r(?:\+(\d+))?\}")
_NIBBLES_AVX512 = r"""

define linkonce_odr void @sq10_nibbles{rows}_avx512(ptr %T, i64 %stride, ptr %signs, i64 %nq,
                                                   ptr %out) alwaysinline {
entry:
  %off{r} = mul i64 %stride, {r}
  %T{r} = getelementptr float, ptr %T, i64 %off{r}
  %none = icmp eq i64 %nq, 0
  br i1 %none, label %done, label %loop
loop:
  %q = phi i64 [0, %entry], [%q1, %loop]
  %lo_sum{r} = phi <16 x float> [zeroinitializer, %entry], [%lo_sum{r}n, %loop]
  %hi_sum{r} = phi <16 x float> [zeroinitializer, %entry], [%hi_sum{r}n, %loop]
  ; quad q's 16 sign bytes, one per 32-bit lane: row t's nibble in bits 0-3, row 16+t's in bits 4-7; unpacked
  ; once for every row of x
  %s_at = mul i64 %q, 16
  %s_ptr = getelementptr i8, ptr %signs, i64 %s_at
  %s = load <16 x i8>, ptr %s_ptr, align 1
  %s32 = zext <16 x i8> %s to <16 x i32>
  %lo = and <16 x i32> %s32, SPLAT15_32
  %hi = lshr <16 x i32> %s32, SPLAT4_32
  ; row r of x: its own table of quad q, 16 fp32 entries in one register; vpermps picks entry idx[t] for lane t,
  ; rows 0-15 by the low nibbles, rows 16-31 by the high ones
  %t_at = mul i64 %q, 16
  %t{r}_ptr = getelementptr float, ptr %T{r}, i64 %t_at
  %t{r} = load <16 x float>, ptr %t{r}_ptr, align 4
  %lo_v{r} = call <16 x float> @llvm.x86.avx512.permvar.sf.512(<16 x float> %t{r}, <16 x i32> %lo)
  %hi_v{r} = call <16 x float> @llvm.x86.avx512.permvar.sf.512(<16 x float> %t{r}, <16 x i32> %hi)
  %lo_sum{r}n = fadd <16 x float> %lo_sum{r}, %lo_v{r}
  %hi_sum{r}n = fadd <16 x float> %hi_sum{r}, %hi_v{r}
  %q1 = add i64 %q, 1
  %more = icmp ult i64 %q1, %nq
  br i1 %more, label %loop, label %done
done:
  %r_lo{r} = phi <16 x float> [zeroinitializer, %entry], [%lo_sum{r}n, %loop]
  %r_hi{r} = phi <16 x float> [zeroinitializer, %entry], [%hi_sum{r}n, %loop]
  %o_lo{r} = getelementptr float, ptr %out, i64 {32r}
  store <16 x float> %r_lo{r}, ptr %o_lo{r}, align 4
  %o_hi{r} = getelementptr float, ptr %out, i64 {32r+16}
  store <16 x float> %r_hi{r}, ptr %o_hi{r}, align 4
  ret void
}
"""
_CODES = r"""

define linkonce_odr void @sq10_codes{rows}(ptr %codes, ptr %cols, i64 %n, i64 %np, ptr %x, i64 %xstride, ptr %xc,
                                       i64 %xcstride, ptr %out) alwaysinline {
entry:
  %xoff{r} = mul i64 %xstride, {r}
  %x{r} = getelementptr float, ptr %x, i64 %xoff{r}
  %xcoff{r} = mul i64 %xcstride, {r}
  %xc{r} = getelementptr float, ptr %xc, i64 %xcoff{r}
  %stride = shl i64 %np, 4
  %two = icmp eq i64 %np, 2
  %none = icmp eq i64 %n, 0
  br i1 %none, label %done, label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %join]
  %a{r} = phi <32 x float> [zeroinitializer, %entry], [%a{r}n, %join]
  %sx{r} = phi float [0.0, %entry], [%sx{r}n, %join]
  %scx{r} = phi float [0.0, %entry], [%scx{r}n, %join]
  ; column i's first nibble plane: byte t = row t's bits 0-3 (low nibble) | row 16+t's (high nibble),
  ; unpacked once for every row of x
  %c_at = mul i64 %i, %stride
  %c_ptr = getelementptr i8, ptr %codes, i64 %c_at
  %c = load <16 x i8>, ptr %c_ptr, align 1
  %lo = and <16 x i8> %c, SPLAT15
  %hi = lshr <16 x i8> %c, SPLAT4
  %v = shufflevector <16 x i8> %lo, <16 x i8> %hi, <32 x i32> FIRST32
  br i1 %two, label %high, label %join
high:
  %c2_ptr = getelementptr i8, ptr %c_ptr, i64 16
  %c2 = load <16 x i8>, ptr %c2_ptr, align 1
  %lo2 = and <16 x i8> %c2, SPLAT15
  %hi2 = lshr <16 x i8> %c2, SPLAT4
  %v2 = shufflevector <16 x i8> %lo2, <16 x i8> %hi2, <32 x i32> FIRST32
  %v2s = shl <32 x i8> %v2, SPLAT4x32
  %vh = or <32 x i8> %v, %v2s
  br label %join
join:
  %code = phi <32 x i8> [%v, %loop], [%vh, %high]
  %codef = uitofp <32 x i8> %code to <32 x float>
  %col_ptr = getelementptr i16, ptr %cols, i64 %i
  %col16 = load i16, ptr %col_ptr, align 2
  %col = zext i16 %col16 to i64
  ; row r of x: its activation at the column, times the 32 codes (a multiply, then an add: no FMA)
  %x{r}_ptr = getelementptr float, ptr %x{r}, i64 %col
  %xv{r} = load float, ptr %x{r}_ptr, align 4
  %xc{r}_ptr = getelementptr float, ptr %xc{r}, i64 %col
  %xcv{r} = load float, ptr %xc{r}_ptr, align 4
  %sx{r}n = fadd float %sx{r}, %xv{r}
  %scx{r}n = fadd float %scx{r}, %xcv{r}
  %xs{r}0 = insertelement <32 x float> poison, float %xv{r}, i64 0
  %xs{r} = shufflevector <32 x float> %xs{r}0, <32 x float> poison, <32 x i32> zeroinitializer
  %cx{r} = fmul <32 x float> %codef, %xs{r}
  %a{r}n = fadd <32 x float> %a{r}, %cx{r}
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, %n
  br i1 %more, label %loop, label %done
done:
  %ra{r} = phi <32 x float> [zeroinitializer, %entry], [%a{r}n, %join]
  %rsx{r} = phi float [0.0, %entry], [%sx{r}n, %join]
  %rscx{r} = phi float [0.0, %entry], [%scx{r}n, %join]
  %o{r} = getelementptr float, ptr %out, i64 {34r}
  store <32 x float> %ra{r}, ptr %o{r}, align 4
  %osx{r} = getelementptr float, ptr %out, i64 {34r+32}
  store float %rsx{r}, ptr %osx{r}, align 4
  %oscx{r} = getelementptr float, ptr %out, i64 {34r+33}
  store float %rscx{r}, ptr %oscx{r}, align 4
  ret void
}
"""
_NIBBLE_IR["avx512"] += "".join(_per_row(_NIBBLES_AVX512, rows) for rows in (1, BATCH_ROWS))
_NIBBLE_IR["plain"] += "".join(_per_row(_CODES, rows) for rows in (1, BATCH_ROWS))
for _name in sorted(_IR_CONSTANTS, key=len, reverse=True):   # the longest first: SPLAT4x32 before SPLAT4
    _NIBBLE_IR = {isa: ir.replace(_name, _IR_CONSTANTS[_name]) for isa, ir in _NIBBLE_IR.items()}
# Where the target CPU lacks an instruction set its loop is linked as a stub that traps: never called (the
# kernels check cpu_isas() first), but it lets the kernels that name it compile.
_STUB_SIGNATURES = {"avx2": ["sq10_nibbles_avx2(ptr, ptr, i64, ptr)"],
                    "avx512": ["sq10_nibbles1_avx512(ptr, i64, ptr, i64, ptr)",
                               "sq10_nibbles4_avx512(ptr, i64, ptr, i64, ptr)"]}
_NIBBLE_STUBS = {isa: "declare void @llvm.trap()\n"
                 + f"@llvm.used = appending global [{len(signatures)} x ptr] ["
                 + ", ".join("ptr @" + s.split("(")[0] for s in signatures) + '], section "llvm.metadata"\n'
                 + "".join(f"""
define linkonce_odr void @{signature} {{
  call void @llvm.trap()
  unreachable
}}
""" for signature in signatures) for isa, signatures in _STUB_SIGNATURES.items()}


def _define_nibble_intrinsics():
    """Version 2's IR loops as numba intrinsics (load_numba)."""
    global _nibble_sums_avx2, _nibble_sums_avx512, _code_sums, _nibble_sums4_avx512, _code_sums4, _combine

    @numba.extending.intrinsic
    def _nibble_sums_avx2(typingctx, planes, p_at, signs, s_at, nq, out, o_at):
        """out.flat[o_at + r] = Σ_{q<nq} T_q[nibble of row r in quad q], the tables' byte planes at
        planes.flat[p_at:], the quads' sign bytes at signs.flat[s_at:]."""
        return _ir_call("sq10_nibbles_avx2", ("uint8", "uint8", "i64", "float32"),
                        planes, p_at, signs, s_at, nq, out, o_at)

    def nibble_sums_avx512(rows):
        @numba.extending.intrinsic
        def sums(typingctx, T, t_at, stride, signs, s_at, nq, out, o_at):
            """The same sums from the fp32 tables at T.flat[t_at:], for `rows` rows of x at once: row b's tables
            at T.flat[t_at + b·stride:], its sums at out.flat[o_at + 32b:]."""
            return _ir_call(f"sq10_nibbles{rows}_avx512", ("float32", "i64", "uint8", "i64", "float32"), T, t_at,
                            stride, signs, s_at, nq, out, o_at)
        return sums
    _nibble_sums_avx512, _nibble_sums4_avx512 = nibble_sums_avx512(1), nibble_sums_avx512(BATCH_ROWS)

    def code_sums(rows):
        @numba.extending.intrinsic
        def sums(typingctx, codes, c_at, cols, k_at, n, np_, x, x_at, x_stride, xc, xc_at, xc_stride, out, o_at):
            """out.flat[o_at + r] = Σ_{i<n} code(i, r)·x.flat[x_at + cols.flat[k_at + i]]; then Σ x and Σ xc over
            the n columns; for `rows` rows of x at once: row b's x at x.flat[x_at + b·x_stride:] (xc alike), its
            34 sums at out.flat[o_at + 34b:]."""
            return _ir_call(f"sq10_codes{rows}", ("uint8", "uint16", "i64", "i64", "float32", "i64", "float32",
                                                  "i64", "float32"),
                            codes, c_at, cols, k_at, n, np_, x, x_at, x_stride, xc, xc_at, xc_stride, out, o_at)
        return sums
    _code_sums, _code_sums4 = code_sums(1), code_sums(BATCH_ROWS)

    @numba.extending.intrinsic
    def _combine(typingctx, const, c_at, plus, p_at, dot, d_at, bx, bcx, sx, y, y_at):
        """y.flat[y_at + r] += α·(2·plus − bcx) + μ·bx + scale·dot − scale·zero·sx for the 32 rows r of a record
        (const.flat[c_at:]: α, μ, scale, scale·zero, 32 each; plus, dot at their offsets): _combine_plain's sums."""
        return _ir_call("sq10_combine", ("float32", "float32", "float32", "f32", "f32", "f32", "float32"),
                        const, c_at, plus, p_at, dot, d_at, bx, bcx, sx, y, y_at)


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _nibble_sums_plain(T, t_at, signs, s_at, nq, out):
    """out[r] = Σ_{q<nq} T.flat[t_at + 16q + nibble of row r in quad q]: the IR's sums, one lookup at a time."""
    T = T.reshape(-1)
    out[:ROWS] = 0
    for q in range(nq):
        for t in range(16):
            byte = signs[s_at + 16 * q + t]
            out[t] += T[t_at + 16 * q + (byte & 15)]          # row t: the low nibble
            out[16 + t] += T[t_at + 16 * q + (byte >> 4)]     # row 16 + t: the high one


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _code_sums_plain(codes, c_at, cols, k_at, n, planes, x, x_at, xc, xc_at, out):
    """out[r] = Σ_{i<n} code(i, r)·x.flat[x_at + cols[k_at + i]], out[32] = Σ x, out[33] = Σ xc over the n
    columns: sq10_codes1, one row at a time."""
    x, xc = x.reshape(-1), xc.reshape(-1)
    out[:] = 0
    for i in range(n):
        j = cols[k_at + i]
        xs = x[x_at + j]
        out[ROWS] += xs
        out[ROWS + 1] += xc[xc_at + j]
        at = c_at + 16 * planes * i
        for t in range(16):
            lo, hi = codes[at + t] & 15, codes[at + t] >> 4  # rows t and 16 + t, bits 0-3
            if planes == 2:                                  # bits 4-7
                lo |= (codes[at + 16 + t] & 15) << 4
                hi |= (codes[at + 16 + t] >> 4) << 4
            out[t] += np.float32(lo) * xs
            out[16 + t] += np.float32(hi) * xs


@cpu_kernel(fastmath=False, cache=True)   # explicit: a callee inherits its caller's fastmath otherwise
def _combine_plain(const, plus, dot, bx, bcx, sx, y):
    """y[r] += α·(2·plus[r] − bcx) + μ·bx + scale·dot[r] − scale·zero·sx, r < 32: a record's part of the product
    (const: α, μ, scale, scale·zero, 32 each), in float32, left to right, as sq10_combine."""
    two = np.float32(2)                                      # (a literal 2 would make the term a double)
    for r in range(ROWS):
        y[r] += (const[r] * (two * plus[r] - bcx) + const[ROWS + r] * bx
                 + const[2 * ROWS + r] * dot[r] - const[3 * ROWS + r] * sx)


@cpu_kernel(fastmath=False, cache=True, inline="always")   # inlined: a call per record costs more than the loop
def _record_constants(data16, data32, rec, wide, bits):
    """The record's 4 × 32 constants (α, μ, scale, scale·zero) as fp32 bits into `bits` (128,) uint32; returns
    where its sign bytes begin. data16, data32: the records' bytes seen as uint16, uint32. (Through a slice:
    indexing data16 itself, numba checks for negative indices and the loop stays scalar, 10× slower.)"""
    if wide:
        src32 = data32[rec // 4:rec // 4 + 4 * ROWS]
        for i in range(4 * ROWS):
            bits[i] = src32[i]
        return rec + 16 * ROWS
    src16 = data16[rec // 2:rec // 2 + 4 * ROWS]
    for i in range(4 * ROWS):
        bits[i] = np.uint32(src16[i]) << 16                   # bf16: the high half of an fp32
    return rec + 8 * ROWS


@cpu_kernel(parallel=True, cache=True)   # no fastmath: every branch rounds alike, so the twins agree to the bit
def _columns_gemv(x, colscale, chunk, threads, data, at, count, part, wide, planes, groups, isa, y):
    """y (M, 32·L) = x @ Wᵀ for the rows of x (M, in) and every lane block of the layout: the tables first (one
    set per linear and row of x), then one parallel region over lane blocks (a contiguous range per thread),
    in passes of `chunk` row-groups so that one pass's tables stay in L2. `threads`: numba.get_num_threads()
    (an argument: numba does not cache a function that asks itself). isa: 0 plain, 1 AVX2, 2 AVX-512."""
    M, n_in = x.shape
    L, ng = at.shape
    P, Q = colscale.shape[0], groups[ng - 1, 2] + groups[ng - 1, 3]
    xc = np.empty((P, M, n_in), np.float32)
    X = np.empty((P, M, ng, 2), np.float32)
    T = np.empty((P, M, Q, 16), np.float32)
    tables = np.empty((P, M, Q if isa == 1 else 0, 4, 16), np.uint8)
    _nibble_tables(x, colscale, groups, isa == 1, xc, X, T, tables)
    data16, data32 = data.view(np.uint16), data.view(np.uint32)
    threads = min(L, threads)
    for th in numba.prange(threads):
        plus = np.empty((BATCH_ROWS, ROWS), np.float32)      # per row of x and weight row: Σ c·x over s = +1
        dot = np.empty((BATCH_ROWS, ROWS + 2), np.float32)   # Σ code·x over the salient weights; Σ x, Σ c·x
        bits = np.empty(4 * ROWS, np.uint32)
        const = bits.view(np.float32)                        # α, μ, scale, scale·zero: 32 each
        for g0 in range(0, ng, chunk):
            for lb in range(th * L // threads, (th + 1) * L // threads):
                p = part[lb]
                for g in range(g0, min(ng, g0 + chunk)):
                    n, nq = count[lb, g], groups[g, 3]
                    s_at = _record_constants(data16, data32, at[lb, g], wide[p], bits)
                    c_at = s_at + 16 * nq                    # the codes
                    k_at = c_at + 16 * planes[p] * n         # the salient columns
                    m = 0
                    while m < M:                             # rows m .. m + B − 1 of x
                        B = BATCH_ROWS if isa == 2 and M - m >= BATCH_ROWS else 1
                        t_at = ((p * M + m) * Q + groups[g, 2]) * 16
                        xc_at = (p * M + m) * n_in
                        if B > 1:
                            _nibble_sums4_avx512(T, t_at, Q * 16, data, s_at, nq, plus, 0)
                            _code_sums4(data, c_at, data16, k_at // 2, n, planes[p], x, m * n_in, n_in,
                                        xc, xc_at, n_in, dot, 0)
                        elif isa == 2:
                            _nibble_sums_avx512(T, t_at, Q * 16, data, s_at, nq, plus, 0)
                        elif isa == 1:
                            _nibble_sums_avx2(tables, 4 * t_at, data, s_at, nq, plus, 0)
                        else:
                            _nibble_sums_plain(T, t_at, data, s_at, nq, plus[0])
                        if B == 1 and isa > 0:
                            _code_sums(data, c_at, data16, k_at // 2, n, planes[p], x, m * n_in, n_in, xc, xc_at,
                                       n_in, dot, 0)
                        elif B == 1:
                            _code_sums_plain(data, c_at, data16, k_at // 2, n, planes[p], x, m * n_in, xc, xc_at,
                                             dot[0])
                        for b in range(B):
                            sx, scx = dot[b, ROWS], dot[b, ROWS + 1]                # Σ_{S∩g} x and Σ_{S∩g} c·x
                            bx, bcx = X[p, m + b, g, 0] - sx, X[p, m + b, g, 1] - scx   # the binary columns'
                            if isa > 0:
                                _combine(const, 0, plus, ROWS * b, dot, (ROWS + 2) * b, bx, bcx, sx,
                                         y, (m + b) * y.shape[1] + ROWS * lb)
                            else:
                                _combine_plain(const, plus[b], dot[b], bx, bcx, sx, y[m + b, ROWS * lb:])
                        m += B


@cpu_kernel(parallel=True, cache=True)
def _columns_decode(data, at, count, part, wide, planes, groups, colscale, lb0, WT):
    """Lane blocks lb0, lb0 + 1, ... decoded, transposed, into the float32 tile WT (in, 32·blocks): column c of
    WT is row c of the tile. Transposed so that the innermost loop, over a block's rows, writes adjacent floats."""
    data16, data32 = data.view(np.uint16), data.view(np.uint32)
    for tb in numba.prange(WT.shape[1] // ROWS):
        lb, c0 = lb0 + tb, ROWS * tb
        p = part[lb]
        bits = np.empty(4 * ROWS, np.uint32)
        const = bits.view(np.float32)
        for g in range(groups.shape[0]):
            col, w, nq, n = groups[g, 0], groups[g, 1], groups[g, 3], count[lb, g]
            s_at = _record_constants(data16, data32, at[lb, g], wide[p], bits)
            for j in range(w):                                     # binary: μ ± α·c_j (every column, first)
                c = colscale[p, col + j]
                for t in range(16):
                    byte = data[s_at + 16 * (j // 4) + t]
                    for half in range(2):                          # rows t and 16 + t
                        r = t + 16 * half
                        sign = np.float32(2 * ((byte >> (j % 4 + 4 * half)) & 1) - 1)
                        WT[col + j, c0 + r] = const[ROWS + r] + const[r] * c * sign
            c_at = s_at + 16 * nq
            k_at = c_at + 16 * planes[p] * n
            for i in range(n):                                     # salient: scale·code − scale·zero
                j = data16[k_at // 2 + i]
                for t in range(16):
                    for half in range(2):
                        r = t + 16 * half
                        code = np.int64(0)
                        for q in range(planes[p]):                 # nibble plane q: bits 4q .. 4q+3
                            byte = np.int64(data[c_at + 16 * (planes[p] * i + q) + t])
                            code |= ((byte >> (4 * half)) & 15) << (4 * q)
                        WT[j, c0 + r] = const[2 * ROWS + r] * np.float32(code) - const[3 * ROWS + r]


def _columns_rows(x2: torch.Tensor, lay: ColumnsLayout, isa: str) -> np.ndarray:
    """y (M, 32·L) float32 for x2 (M, in) float32: every lane block's 32 rows (padding included)."""
    M, n_in = x2.shape
    L = len(lay.at)
    if M <= COLUMNS_TABLE_BATCH:
        y = np.zeros((M, ROWS * L), np.float32)
        quad_bytes = len(lay.colscale) * M * 64                   # one quad's tables, every linear and row of x
        chunk = max(1, TABLE_BYTES // (quad_bytes * int(lay.groups[:, 3].max())))
        _columns_gemv(x2.numpy(), lay.colscale, chunk, numba.get_num_threads(), lay.data, lay.at, lay.count,
                      lay.part, lay.wide, lay.planes, lay.groups, ISAS.index(isa), y)
        return y
    y = np.empty((M, ROWS * L), np.float32)
    step = max(1, TILE_BYTES // (4 * n_in * ROWS))                 # lane blocks per tile
    for lb0 in range(0, L, step):
        nb = min(step, L - lb0)
        WT = torch.empty(n_in, nb * ROWS)
        _columns_decode(lay.data, lay.at, lay.count, lay.part, lay.wide, lay.planes, lay.groups, lay.colscale, lb0,
                        WT.numpy())
        y[:, lb0 * ROWS:(lb0 + nb) * ROWS] = (x2 @ WT).numpy()
    return y


def columns_matmul_parts(x: torch.Tensor, lay: ColumnsLayout, isa: str | None = None) -> list:
    """[x @ W_iᵀ for each linear i of a (fused) columns layout], in one kernel call; x (..., in), any float
    dtype. isa: "plain", "avx2" or "avx512" (one of cpu_isas()); default nibble_isa()."""
    n_in = lay.shape[1]
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {n_in}")
    isa = nibble_isa() if isa is None else isa
    if isa not in cpu_isas():
        raise ValueError(f"isa {isa!r}: this CPU runs {', '.join(cpu_isas())}")
    x2 = x.reshape(-1, n_in).to(torch.float32).contiguous()
    y = torch.from_numpy(_columns_rows(x2, lay, isa))
    parts = []
    for place, span in zip(lay.outputs, lay.spans):
        yp = y[:, span[0]:span[0] + span[1]] if span else y[:, torch.from_numpy(place)]
        parts.append(yp.to(x.dtype).reshape(*x.shape[:-1], len(place)))
    return parts


def columns_matmul(x: torch.Tensor, lay: ColumnsLayout, isa: str | None = None) -> torch.Tensor:
    """y = x @ Wᵀ on the CPU for a columns-layout linear repacked by `columns_cpu_layout`; x (..., in)."""
    if len(lay.outputs) != 1:
        raise ValueError("a fused layout of several linears: use columns_matmul_parts")
    return columns_matmul_parts(x, lay, isa)[0]


# -----------------------------------------------------------------------------
# numba (CPU): one token at a time (model.Decoder; its plain twin is model.Transformer.forward)
#
# A decode step of a small model is mostly overhead around the arithmetic. At SmolLM2's shapes a packed product
# takes ~50 µs in its kernel and about as long again in the Python around it (reshapes, checks, the output's
# allocation, the parts' views), and a block's norms, RoPE, residuals and SwiGLU are ~40 small torch ops of a few
# µs each. So the decode step binds each product's arguments once (`DecodeProduct`: its input and output are
# buffers made once) and does a block's elementwise work in three small kernels, in place, on the same buffers.
# Only attention itself stays in torch (scaled_dot_product_attention).

class DecodeProduct:
    """y = x @ Wᵀ for one token through a (fused) columns layout, into buffers made once: x (1, in) float32 is
    read at every call (the caller writes it first), and the call returns the linears' outputs (out_i,), buffers
    overwritten by the next call."""
    def __init__(self, lay: ColumnsLayout, x: np.ndarray):
        load_numba()
        if x.shape != (1, lay.shape[1]) or x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError(f"DecodeProduct: x must be float32 (1, {lay.shape[1]}), contiguous")
        quad_bytes = len(lay.colscale) * 64                        # as _columns_rows chooses, for one row of x
        chunk = max(1, TABLE_BYTES // (quad_bytes * int(lay.groups[:, 3].max())))
        self.y = np.zeros((1, ROWS * len(lay.at)), np.float32)
        self.args = (x, lay.colscale, chunk, numba.get_num_threads(), lay.data, lay.at, lay.count, lay.part,
                     lay.wide, lay.planes, lay.groups, ISAS.index(nibble_isa()), self.y)
        # a linear's output: a view of y where its rows are consecutive (the rule), else gathered into a buffer
        self.parts = [self.y[0, span[0]:span[0] + span[1]] if span else np.zeros(len(place), np.float32)
                      for place, span in zip(lay.outputs, lay.spans)]
        self.gathers = [(place, part) for place, span, part in zip(lay.outputs, lay.spans, self.parts) if not span]

    def __call__(self) -> list:
        self.y.fill(0)                      # the kernel adds each row-group's sums into y
        _columns_gemv(*self.args)
        for place, part in self.gathers:
            np.take(self.y[0], place, out=part)
        return self.parts


@cpu_kernel(cache=True)
def decode_norm(h, delta, weight, eps, out):
    """h += delta (a sublayer's output joins the residual stream), then out = h / rms(h) · weight, as
    model.RMSNorm computes it (the mean of squares accumulated in float64 here). All float32 (dim,)."""
    n = h.shape[0]
    ss = 0.0
    for i in range(n):
        h[i] += delta[i]
        ss += np.float64(h[i]) * np.float64(h[i])
    r = np.float32(1.0 / np.sqrt(ss / n + eps))
    for i in range(n):
        out[i] = h[i] * r * weight[i]


@cpu_kernel(cache=True)
def _rotate(x, cos, sin, out):
    """RoPE on one token's heads x (heads, head_dim) into out: consecutive pairs (x0, x1), (x2, x3)... turned by
    the angles whose cos and sin are given (head_dim/2,), as model.apply_rotary_emb does."""
    for h in range(x.shape[0]):
        for i in range(x.shape[1] // 2):
            a, b = x[h, 2 * i], x[h, 2 * i + 1]
            out[h, 2 * i] = a * cos[i] - b * sin[i]
            out[h, 2 * i + 1] = a * sin[i] + b * cos[i]


@cpu_kernel(cache=True)
def decode_rope(q_in, k_in, v_in, cos, sin, pos, q, cache_k, cache_v):
    """One token's q (n_heads, head_dim) and k (n_kv_heads, head_dim) rotated by position pos's angles: q into
    q, k into row pos of cache_k (max_len, n_kv_heads, head_dim); v copied into row pos of cache_v."""
    _rotate(q_in, cos, sin, q)
    _rotate(k_in, cos, sin, cache_k[pos])
    cache_v[pos] = v_in


@cpu_kernel(cache=True)
def decode_swiglu(gate, up, hidden):
    """SwiGLU's inner activation of one token: hidden = silu(gate) · up, silu(g) = g / (1 + e^−g). (n,) each."""
    for i in range(hidden.shape[0]):
        hidden[i] = gate[i] / (np.float32(1) + np.exp(-gate[i])) * up[i]


# -----------------------------------------------------------------------------
# numba (CPU): squeeze10.py's coordinate descent (`descend_codes`), one row per thread
#
# The torch twin in squeeze10.py moves all rows at once, column by column, and keeps g = (W − Ŵ)·H exact with
# GPTQ's lazy updates: ~10 small tensor ops per column, which on 2 cores cost more than the arithmetic. Rows are
# independent, so here each thread takes whole rows and walks their columns in order with scalar code; g is
# updated only where a weight moved (most do not), by one row of H.

@cpu_kernel(parallel=True, cache=True)
def descend_rows(g, H, code, salient, scale, mu, alpha, colscale, maxq, group_size):
    """One sweep over every row r, in place: g (out, in) = (W − Ŵ)·H on entry; code (out, in) float32 (the
    grid code, or 1 for μ + α·c); salient (out, in) bool; scale, mu, alpha (out, ng) float32; colscale
    (out, in) float32, c_j. A salient weight takes the rounded 1-D optimum code, a binary one flips where f
    drops. The moves t are `binary_weights`' and `grid_weights`' float32 differences."""
    out, n = g.shape
    for r in numba.prange(out):
        for j in range(n):
            h = H[j, j]
            if salient[r, j]:
                s = scale[r, j // group_size]
                best = min(max(np.rint(code[r, j] + g[r, j] / (h * s)), 0.0), maxq)
                t = s * (best - code[r, j])
                code[r, j] = best
            else:
                ac = alpha[r, j // group_size] * colscale[r, j]
                plus = mu[r, j // group_size] + ac
                minus = mu[r, j // group_size] - ac
                t = minus - plus if code[r, j] == 1 else plus - minus   # the move to the other sign
                if t * (t * h - 2 * g[r, j]) < 0:
                    code[r, j] = 1 - code[r, j]
                else:
                    t = 0.0
            if t != 0:
                for i in range(j + 1, n):     # only the columns still to visit: g of earlier ones is not read
                    g[r, i] -= t * H[j, i]


# -----------------------------------------------------------------------------
# 3. Triton (GPU): y = x @ Wᵀ as `reference_matmul` computes it, from the file's own bytes
#
# On the GPU the file's own layout is read as it is: batch-1 decoding is memory-bound, and the trits are the
# fewest bytes (2.9 bits/weight in all for the default preset). A program owns BLOCK_N output channels and walks
# their row-groups; for each it reads BLOCK_N × ceil(w/5) state bytes, BLOCK_N × ceil(k·hb/8) code bytes and
# 6 bytes of constants per row, decodes the (BLOCK_N, 128) tile in registers — the base-3 digit of every
# weight, and for a salient weight its rank among the salient ones of its row (a cumulative sum), which is the
# index of its code — into the weights `dequantize` makes (`binary_weights`, `grid_weights`, in registers), and
# multiplies. Batch ≤ 8: broadcast-multiply and reduce (no tensor cores: the product is a matrix-vector one);
# larger batches: tl.dot on (BLOCK_M, 128) × (128, BLOCK_N) tiles.

if triton is not None:
    @triton.jit
    def _mixed_kernel(x_ptr, y_ptr, state_ptr, high_ptr, binary_ptr, scale_ptr, zero_ptr, groups_ptr,
                      M, N, n_groups, stride_xm, stride_ym, state_stride, high_stride,
                      LAYOUT: tl.constexpr, HB: tl.constexpr, BG: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)         # output channels
        ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)            # rows of x
        row_ok, m_ok = rows < N, ms < M
        j = tl.arange(0, BG)                                               # position in the row-group
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(n_groups):
            col = tl.load(groups_ptr + g * 5)
            width = tl.load(groups_ptr + g * 5 + 1)
            state_at = tl.load(groups_ptr + g * 5 + 2)
            high_at = tl.load(groups_ptr + g * 5 + 3)
            inside = row_ok[:, None] & (j < width)[None, :]                # (BLOCK_N, BG)
            if LAYOUT == 0:    # trits: weight j is base-3 digit j % 5 of byte j // 5
                t = tl.load(state_ptr + rows[:, None] * state_stride + state_at + (j // 5)[None, :],
                            mask=inside, other=0).to(tl.int32)
                r = j % 5
                power = tl.where(r == 0, 1, tl.where(r == 1, 3, tl.where(r == 2, 9, tl.where(r == 3, 27, 81))))
                digit = (t // power[None, :]) % 3
                salient = (digit == 2) & inside
                plus = digit == 1
            elif LAYOUT == 1:  # signs: bit j % 8 of byte j // 8
                t = tl.load(state_ptr + rows[:, None] * state_stride + state_at + (j // 8)[None, :],
                            mask=inside, other=0).to(tl.int32)
                plus = ((t >> (j % 8)[None, :]) & 1) == 1
                salient = inside & False
            else:              # grid: every weight is a code
                salient = inside
                plus = inside
            w = tl.zeros((BLOCK_N, BG), dtype=tl.float32)
            if LAYOUT != 2:
                mu = tl.load(binary_ptr + (rows * n_groups + g) * 2, mask=row_ok, other=0).to(tl.float32)
                alpha = tl.load(binary_ptr + (rows * n_groups + g) * 2 + 1, mask=row_ok, other=0).to(tl.float32)
                w = tl.where(plus, mu[:, None] + alpha[:, None], mu[:, None] - alpha[:, None])   # binary_weights
            if LAYOUT != 1:
                rank = tl.cumsum(salient.to(tl.int32), axis=1) - 1         # the i-th salient weight has code i
                bit = rank * HB
                src = high_ptr + rows[:, None] * high_stride + high_at + bit // 8
                code = tl.load(src, mask=salient, other=0).to(tl.int32)
                if 8 % HB != 0:  # 3-, 5-, 6-, 7-bit codes may straddle two bytes
                    spill = salient & ((bit % 8) + HB > 8)
                    code = code | (tl.load(src + 1, mask=spill, other=0).to(tl.int32) << 8)
                code = (code >> (bit % 8)) & ((1 << HB) - 1)
                scale = tl.load(scale_ptr + rows * n_groups + g, mask=row_ok, other=0).to(tl.float32)
                zero = tl.load(zero_ptr + rows * n_groups + g, mask=row_ok, other=0).to(tl.float32)
                w = tl.where(salient, scale[:, None] * (code.to(tl.float32) - zero[:, None]), w)   # grid_weights
            w = tl.where(inside, w, 0.0)
            xg = tl.load(x_ptr + ms[:, None] * stride_xm + col + j[None, :],
                         mask=m_ok[:, None] & (j < width)[None, :], other=0.0).to(tl.float32)
            if DOT:
                acc += tl.dot(xg, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.sum(xg[:, None, :] * w[None, :, :], axis=2)
        tl.store(y_ptr + ms[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & row_ok[None, :])


def triton_matmul(x: torch.Tensor, tensors: dict, spec: dict, groups: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ Wᵀ with the Triton kernel, straight from the packed tensors (CUDA tensors; any device under
    TRITON_INTERPRET=1). `groups`: group_table(spec) on x's device, cached by the caller."""
    if triton is None:
        raise RuntimeError("the triton backend needs CUDA (or TRITON_INTERPRET=1) and the `triton` package")
    out, n_in = spec["shape"]
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {n_in}")
    groups = group_table(spec).to(x.device) if groups is None else groups
    x2 = x.reshape(-1, n_in).contiguous()
    M = x2.shape[0]
    y = torch.empty(M, out, dtype=x.dtype, device=x.device)
    state = tensors.get("trits", tensors.get("signs"))
    high = tensors.get("high")
    absent = groups  # any tensor will do for a pointer the layout never reads
    if M <= 8:
        block_m, block_n, dot = triton.next_power_of_2(M), 16, False
    else:
        block_m, block_n, dot = 16, 32, True
    grid = (triton.cdiv(out, block_n), triton.cdiv(M, block_m))
    _mixed_kernel[grid](
        x2, y, absent if state is None else state, absent if high is None else high,
        tensors.get("binary", absent), tensors.get("scale", absent), tensors.get("zero", absent), groups,
        M, out, groups.shape[0], x2.stride(0), y.stride(0),
        0 if state is None else state.stride(0), 0 if high is None else high.stride(0),
        LAYOUT=LAYOUTS.index(spec["layout"]), HB=spec["high_bits"], BG=triton.next_power_of_2(spec["group_size"]),
        BLOCK_M=block_m, BLOCK_N=block_n, DOT=dot)
    return y.reshape(*x.shape[:-1], out)


# Version 2 ("columns") on the GPU. The rows of a linear come in blocks of R = block_rows that share one set of
# K salient input columns, so the index costs in bits per block, not per weight; a program therefore owns
# BLOCK_N rows of ONE row-block (grid axis 0 walks blocks, then tiles inside a block) and decodes the block's
# bitmap once as a vector of BK columns, shared by all its rows. In a row the i-th binary weight is bit i of
# `signs` and the i-th salient code sits at bit i·HB of `high`, so for column j of block b:
#     srank(j) = salient columns of b left of j        (table[b, g] at the row-group's start + a cumsum)
#     brank(j) = j − srank(j)                          (binary columns left of j)
# and the sign byte and code byte(s) of every weight are found from two (BK,) vectors of ranks: no per-weight
# index is stored, and the byte loads of a row are ~BK·0.8/8 and ~BK·0.2·HB/8 neighbouring bytes (one or two
# cache lines), each fetched from DRAM once. The parameters of a row-group (μ, α, scale: fp8 × 2^unit_exp or
# fp16; the HB-bit zero point) are loaded once per row per row-group; colscale once per column per program.
#
# Bytes read per call (defaults: R 32, K = 0.2·in, HB 4, fp8, G 128): the linear's own bytes once, ~1.85 bits
# a weight (0.8 signs + 0.8 codes + 0.22 parameters + 1/32 bitmap; 10.4 MB at 11008×4096, ~2.2 µs at the
# H200's ~4.8 TB/s), the bitmap once per row tile (BLOCK_N = R/2 for small batches: twice), and x once per
# row tile from L2 (it is 8–128 KB). Split-K: when the row tiles alone are fewer than SPLIT_PROGRAMS (4096×4096
# has 256 of them at BLOCK_N 16), the row-groups are cut into `splits` ranges, each program writes its partial
# sums to a (splits, M, out) fp32 buffer, and torch adds them: in a fixed order, so the result is
# deterministic (atomics would not be), for splits·M·out·4 bytes written and read again (32 KB at 4096×4096,
# batch 1, 2 splits).
#
# Block shapes, as the version-1 kernel: batch ≤ 8, BLOCK_N 16 and BK 128 with a broadcast multiply-and-sum
# (a matrix-vector product: tensor cores would idle, and the 3-D (BLOCK_M, 16, 128) product stays ≤ 16 K
# values at M = 8); larger batches, tl.dot on (16, BK) × (BK, 32) tiles in fp32 ("ieee": the tests hold every
# backend to float64 within 1e-5, which tf32 would not meet). BK = next_power_of_2(G) up to 128 (≥ 16 for
# tl.dot): a chunk never straddles two row-groups, so a row's parameters are scalars inside the chunk loop.
# BLOCK_N never exceeds next_power_of_2(R) (nor goes under 16 for tl.dot): with R = 32 no row idles; a small R
# (5, say) idles some.

SPLIT_PROGRAMS = 512  # ~4 programs per SM on a 132-SM H100/H200: enough loads in flight to reach bandwidth


def columns_gpu_table(tensors: dict, spec: dict) -> torch.Tensor:
    """int32 (blocks, ng): how many of row-block b's salient columns lie left of row-group g's first column,
    i.e. the rank of the row-group's first salient code (and, subtracted from the column, of its first sign)
    in every row of the block. Made once per linear from the bitmap (each block's count checked against k);
    4·blocks·ng bytes, 0.4 % of the linear's at 11008×4096. Checks the spec and the tensors' shapes first."""
    check_columns_spec(spec, tensors)
    n_in = spec["shape"][1]
    blocks = column_blocks(spec)
    one_row_per_block = dict(spec, shape=[blocks, n_in], block_rows=1)
    bitmap = salient_columns(tensors, one_row_per_block).to(torch.int32)   # (blocks, in)
    through = bitmap.cumsum(1, dtype=torch.int32)              # salient columns up to and including column j
    starts = torch.arange(0, n_in, spec["group_size"], device=bitmap.device)   # each row-group's first column
    return (through[:, starts] - bitmap[:, starts]).contiguous()


if triton is not None:
    @triton.jit
    def _columns_kernel(x_ptr, part_ptr, columns_ptr, signs_ptr, high_ptr, binary_ptr, scale_ptr, zero_ptr,
                        colscale_ptr, table_ptr,
                        M, N, n_in, n_groups, groups_per_split, block_rows, tiles_per_block, unit,
                        stride_xm, columns_stride, signs_stride, high_stride, zero_stride,
                        G: tl.constexpr, HB: tl.constexpr, BK: tl.constexpr, COLSCALE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr):
        b = tl.program_id(0) // tiles_per_block                            # the row-block
        in_block = (tl.program_id(0) % tiles_per_block) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = b * block_rows + in_block                                   # output channels
        row_ok = (in_block < block_rows) & (rows < N)
        split = tl.program_id(1)
        ms = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)            # rows of x
        m_ok = ms < M
        j = tl.arange(0, BK)                                               # position in the chunk
        g_start = split * groups_per_split
        g_end = tl.minimum(g_start + groups_per_split, n_groups)
        sal_left = tl.load(table_ptr + b * n_groups + g_start)             # block b's salient columns left of here
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(g_start, g_end):
            # the row-group's parameters, one per row: binary w = μ ± α·c_j, salient w = scale·(code − zero).
            # Idle rows read row N − 1's instead of a masked load: fp8 has no `other` (the interpreter cannot
            # cast one), and a masked lane's undefined byte could be a NaN that reaches the sums.
            at = tl.minimum(rows, N - 1) * n_groups + g
            mu = tl.load(binary_ptr + at * 2).to(tl.float32) * unit
            alpha = tl.load(binary_ptr + at * 2 + 1).to(tl.float32) * unit
            scale = tl.load(scale_ptr + at).to(tl.float32) * unit
            zero_bit = g * HB                                              # zero points: HB bits each, LSB first
            zsrc = zero_ptr + rows * zero_stride + zero_bit // 8
            zero = tl.load(zsrc, mask=row_ok, other=0).to(tl.int32)
            if (zero_bit % 8) + HB > 8:  # this (3-, 5-, 6- or 7-bit) zero point straddles two bytes
                zero = zero | (tl.load(zsrc + 1, mask=row_ok, other=0).to(tl.int32) << 8)
            zero = ((zero >> (zero_bit % 8)) & ((1 << HB) - 1)).to(tl.float32)
            width = tl.minimum(G, n_in - g * G)
            for c0 in range(0, width, BK):
                col = g * G + c0 + j                                       # (BK,) input columns
                inside = c0 + j < width
                # the block's bitmap, once for all BLOCK_N rows; the ranks of every column among its kind
                byte = tl.load(columns_ptr + b * columns_stride + col // 8, mask=inside, other=0).to(tl.int32)
                salient = ((byte >> (col % 8)) & 1) == 1
                salient = salient & inside
                sal = salient.to(tl.int32)
                is_binary = inside & (sal == 0)
                srank = sal_left + tl.cumsum(sal, 0) - sal                 # salient columns left of col
                brank = col - srank                                        # binary columns left of col
                sal_left += tl.sum(sal, 0)
                # binary weights: bit brank of the row's signs
                sign_ok = row_ok[:, None] & is_binary[None, :]
                s = tl.load(signs_ptr + rows[:, None] * signs_stride + (brank // 8)[None, :], mask=sign_ok,
                            other=0)
                plus = ((s.to(tl.int32) >> (brank % 8)[None, :]) & 1) == 1
                if COLSCALE:
                    c = tl.load(colscale_ptr + tl.minimum(col, n_in - 1)).to(tl.float32)   # (as μ, α: no mask)
                    ac = alpha[:, None] * c[None, :]
                else:
                    ac = alpha[:, None]
                w = tl.where(plus, mu[:, None] + ac, mu[:, None] - ac)       # (BLOCK_N, BK)
                # salient weights: HB bits at bit srank·HB of the row's high
                bit = srank * HB
                code_ok = row_ok[:, None] & salient[None, :]
                src = high_ptr + rows[:, None] * high_stride + (bit // 8)[None, :]
                code = tl.load(src, mask=code_ok, other=0).to(tl.int32)
                if 8 % HB != 0:  # 3-, 5-, 6-, 7-bit codes may straddle two bytes
                    spill = code_ok & ((bit % 8) + HB > 8)[None, :]
                    code = code | (tl.load(src + 1, mask=spill, other=0).to(tl.int32) << 8)
                code = (code >> (bit % 8)[None, :]) & ((1 << HB) - 1)
                w = tl.where(salient[None, :], scale[:, None] * (code.to(tl.float32) - zero[:, None]), w)
                # x is 0 outside the chunk, where w is finite: those columns add nothing
                xc = tl.load(x_ptr + ms[:, None] * stride_xm + col[None, :],
                             mask=m_ok[:, None] & inside[None, :], other=0.0).to(tl.float32)
                if DOT:
                    acc += tl.dot(xc, tl.trans(w), input_precision="ieee")
                else:
                    acc += tl.sum(xc[:, None, :] * w[None, :, :], axis=2)
        dst = part_ptr + (split * M + ms[:, None]) * N + rows[None, :]
        tl.store(dst, acc, mask=m_ok[:, None] & row_ok[None, :])


def triton_matmul_columns(x: torch.Tensor, tensors: dict, spec: dict, table: torch.Tensor | None = None,
                          splits: int | None = None) -> torch.Tensor:
    """y = x @ Wᵀ for a version-2 ("columns") linear with the Triton kernel, straight from the file's packed
    tensors (columns, signs, high, binary, scale, zero[, colscale]; CUDA tensors, any device under
    TRITON_INTERPRET=1). `table`: columns_gpu_table(tensors, spec) on x's device, made once per linear by the
    caller (made here, with the tensors checked, when None). `splits`: how many ranges of row-groups a row's
    sum is cut into (split-K); default: enough for SPLIT_PROGRAMS programs, at most one per row-group."""
    if triton is None:
        raise RuntimeError("the triton backend needs CUDA (or TRITON_INTERPRET=1) and the `triton` package")
    out, n_in = spec["shape"]
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {n_in}")
    table = columns_gpu_table(tensors, spec) if table is None else table   # (which checks the tensors)
    G, R = spec["group_size"], spec["block_rows"]
    ng = len(group_widths(n_in, G))
    x2 = x.reshape(-1, n_in).contiguous()
    M = x2.shape[0]
    if M <= 8:
        block_m, block_n, dot = triton.next_power_of_2(M), min(16, triton.next_power_of_2(R)), False
    else:
        block_m, block_n, dot = 16, max(16, min(32, triton.next_power_of_2(R))), True
    bk = max(16, min(128, triton.next_power_of_2(G)))
    tiles_per_block = triton.cdiv(R, block_n)
    row_tiles, m_tiles = column_blocks(spec) * tiles_per_block, triton.cdiv(M, block_m)
    if splits is None:
        splits = max(1, min(ng, triton.cdiv(SPLIT_PROGRAMS, row_tiles * m_tiles)))
    if splits < 1:
        raise ValueError(f"splits {splits}: expected at least 1")
    groups_per_split = triton.cdiv(ng, splits)
    splits = triton.cdiv(ng, groups_per_split)                 # no empty range
    part = torch.empty(splits, M, out, dtype=torch.float32, device=x.device)
    unit = scale_unit(spec)
    colscale = tensors.get("colscale", table)                  # any tensor will do for a pointer never read
    grid = (row_tiles, splits, m_tiles)
    _columns_kernel[grid](
        x2, part, tensors["columns"], tensors["signs"], tensors["high"], tensors["binary"], tensors["scale"],
        tensors["zero"], colscale, table,
        M, out, n_in, ng, groups_per_split, R, tiles_per_block, unit,
        x2.stride(0), tensors["columns"].stride(0), tensors["signs"].stride(0), tensors["high"].stride(0),
        tensors["zero"].stride(0),
        G=G, HB=spec["high_bits"], BK=bk, COLSCALE="colscale" in tensors,
        BLOCK_M=block_m, BLOCK_N=block_n, DOT=dot)
    y = part[0] if splits == 1 else part.sum(0)
    return y.to(x.dtype).reshape(*x.shape[:-1], out)

