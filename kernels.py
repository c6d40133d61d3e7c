"""kernels.py — reading Squeeze10's packed weights back: bit unpacking and the dense reference path.

squeeze10.py writes the packed format (its docstring draws the layout); this file is the only reader, so
that `model.py`, the tests and (next) the mixed 1/4-bit matmul kernels all decode the same bytes the same
way. It imports nothing of the project.

A quantized linear W (out, in) is cut into row-groups of `group_size` input columns (the last one narrower
when `in` is not a multiple). In each row-group every weight is one of three things:
    binary   μ − α or μ + α                  (μ, α: fp16, one pair per row-group)
    salient  scale · (code − zero)          (code: high_bits wide; scale fp16, zero uint8 per row-group)
and exactly k of them are salient, k fixed per group width, so each row-group's bytes sit at a fixed offset.

`dequantize(tensors, spec)` rebuilds W in float32 with exactly the arithmetic the quantizer used, so
quantize → pack → dequantize reproduces the quantizer's output bit for bit.
"""
import math

import torch

FORMAT, VERSION = "squeeze10", 1
LAYOUTS = ("trits", "signs", "grid")  # mixed 1/high-bit, all binary, all high-bit (no binary part)


def group_widths(n_in: int, group_size: int) -> list[int]:
    """Widths of the row-groups along the input dimension: [G, G, ..., last (<= G)]."""
    return [min(group_size, n_in - g0) for g0 in range(0, n_in, group_size)]


def trit_bytes(width: int) -> int:
    return math.ceil(width / 5)  # 3^5 = 243 <= 256: five three-way states per byte


def bit_bytes(count: int, nbits: int) -> int:
    return math.ceil(count * nbits / 8)


def unpack_bits(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """(rows, nbytes) uint8 holding `count` values of `nbits` bits each, least significant bit first
    -> (rows, count) int32."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    bits = (packed.to(torch.int32)[..., None] >> shifts) & 1                 # (rows, nbytes, 8)
    bits = bits.flatten(1)[:, :count * nbits].reshape(-1, count, nbits)
    weights = 1 << torch.arange(nbits, device=packed.device, dtype=torch.int32)
    return (bits * weights).sum(-1, dtype=torch.int32)


def unpack_trits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """(rows, nbytes) uint8, five base-3 digits per byte (least significant first) -> (rows, count) int32."""
    powers = torch.tensor([1, 3, 9, 27, 81], device=packed.device, dtype=torch.int32)
    digits = (packed.to(torch.int32)[..., None] // powers) % 3             # (rows, nbytes, 5)
    return digits.flatten(1)[:, :count]


def expected_shapes(spec: dict) -> dict:
    """The shape and dtype of every tensor a linear with this spec must have."""
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


def check_spec(spec: dict, tensors: dict):
    """Raise ValueError (one line) unless `tensors` are exactly what `spec` implies."""
    if spec.get("layout") not in LAYOUTS:
        raise ValueError(f"unknown layout {spec.get('layout')!r}")
    widths = group_widths(spec["shape"][1], spec["group_size"])
    if len(spec["k"]) != len(widths) or any(not 0 <= k <= w for k, w in zip(spec["k"], widths)):
        raise ValueError(f"salient counts {spec['k']} do not fit row-groups of widths {widths}")
    if spec["layout"] == "signs" and any(spec["k"]) or spec["layout"] == "grid" and spec["k"] != widths:
        raise ValueError(f"salient counts {spec['k']} contradict the layout '{spec['layout']}'")
    if not 1 <= spec["high_bits"] <= 8:
        raise ValueError(f"high_bits {spec['high_bits']} outside 1..8")
    expected = expected_shapes(spec)
    if set(tensors) != set(expected):
        raise ValueError(f"tensors {sorted(tensors)}, the layout '{spec['layout']}' needs {sorted(expected)}")
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")


def dequantize(tensors: dict, spec: dict) -> torch.Tensor:
    """Dense float32 weight (out, in) of one packed linear. `tensors`: the linear's packed tensors by short
    name (trits|signs, high, binary, scale, zero); `spec`: shape, group_size, high_bits, layout, k."""
    check_spec(spec, tensors)
    out, n_in = spec["shape"]
    G, hb, layout = spec["group_size"], spec["high_bits"], spec["layout"]
    W = torch.empty(out, n_in, dtype=torch.float32, device=next(iter(tensors.values())).device)
    state_at = high_at = 0  # byte offsets of the current row-group in the state and salient streams
    for g, (width, k) in enumerate(zip(group_widths(n_in, G), spec["k"])):
        if layout == "trits":
            nbytes = trit_bytes(width)
            states = unpack_trits(tensors["trits"][:, state_at:state_at + nbytes], width)
            salient, plus = states == 2, states == 1
        elif layout == "signs":
            nbytes = bit_bytes(width, 1)
            plus = unpack_bits(tensors["signs"][:, state_at:state_at + nbytes], 1, width) == 1
            salient = torch.zeros_like(plus)
        else:
            nbytes = 0
            salient = torch.ones(out, width, dtype=torch.bool, device=W.device)
        state_at += nbytes
        if salient.sum(1).ne(k).any():
            raise ValueError(f"row-group {g}: a row does not hold exactly {k} salient weights")
        w = torch.zeros(out, width, dtype=torch.float32, device=W.device)
        if layout != "grid":
            mu, alpha = tensors["binary"][:, g, 0].float()[:, None], tensors["binary"][:, g, 1].float()[:, None]
            w = torch.where(plus, mu + alpha, mu - alpha)
        if layout != "signs" and k > 0:
            nbytes = bit_bytes(k, hb)
            codes = unpack_bits(tensors["high"][:, high_at:high_at + nbytes], hb, k).float()   # (out, k)
            high_at += nbytes
            scale, zero = tensors["scale"][:, g].float()[:, None], tensors["zero"][:, g].float()[:, None]
            w[salient] = (scale * (codes - zero)).flatten()   # row-major: each row's k values in column order
        W[:, g * G:g * G + width] = w
    return W
