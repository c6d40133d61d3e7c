"""Version 2: the structured salient set (columns shared by blocks of rows), fp8 scales, column scales.

References are independent of squeeze10.py: the mask against its definition, the bits against a byte count
done by hand, and every packed layout against the quantizer's own output, bit for bit.
"""
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

import eval as ev
import kernels
import model as llama
import squeeze10 as sq
from test_squeeze10 import G, correlated_inputs, quantizer_output, quantize_args, run_main, tiny_gguf  # noqa: F401


def columns(**kw):
    """Version 2's structure with fp16 scales and no column scales unless asked (the paper preset's)."""
    return dataclasses.replace(sq.PRESETS["paper"], group_size=G, structure="columns", **kw)


# -----------------------------------------------------------------------------
# the structured mask

@pytest.mark.parametrize("block_rows", [None, 1, 4, 5])
def test_column_mask_shares_the_k_best_columns_per_block_of_rows(block_rows):
    M = torch.rand(14, 40, generator=torch.Generator().manual_seed(1))
    mask = sq.column_mask(M, 0.2, block_rows)
    R = block_rows or 14
    K = kernels.salient_count(0.2, 40)                           # 8
    assert K == 8 and mask.sum(1).eq(K).all()
    for r0 in range(0, 14, R):                               # the last block is narrower when R does not divide 14
        block = mask[r0:r0 + R]
        assert (block == block[0]).all()                     # every row of a block: the same columns
        best = set(M[r0:r0 + R].sum(0).topk(K).indices.tolist())
        assert set(block[0].nonzero()[:, 0].tolist()) == best


def test_quantized_layer_has_the_claimed_structure():
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    rec = quantizer_output(W, X, columns(block_rows=4))
    mask, P = rec.salient, rec.params
    for r0 in range(0, 16, 4):
        assert (mask[r0:r0 + 4] == mask[r0]).all() and int(mask[r0].sum()) == kernels.salient_count(0.2, 32)
    # binary weights take μ ± α of their row-group, salient ones sit on that row-group's grid
    for g0 in range(0, 32, G):
        w, m = rec.weight[:, g0:g0 + G], mask[:, g0:g0 + G]
        g = g0 // G
        for i in range(16):
            binary = w[i][~m[i]]
            allowed = torch.stack([P.mu[i, g] - P.alpha[i, g], P.mu[i, g] + P.alpha[i, g]])
            assert torch.isin(binary, allowed).all()
            codes = w[i][m[i]] / P.scale[i, g] + P.zero[i, g]
            assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= -1e-4 and codes.max() <= 15 + 1e-4


# -----------------------------------------------------------------------------
# packing: bit for bit, and bits from the bytes

@pytest.mark.parametrize("kw", [dict(block_rows=None), dict(block_rows=4, scales="fp8"), dict(block_rows=5),
                                dict(block_rows=3, scales="fp8", salient=0.35, high_bits=3),
                                dict(block_rows=16, scales="fp8", high_bits=8),
                                dict(block_rows=4, column_scale=True), dict(block_rows=4, scales="fp8", column_scale=True),
                                dict(block_rows=5, scales="fp8", column_scale=True, mid_bits=4)])
def test_pack_then_dequantize_reproduces_the_columns_quantizer_bit_for_bit(kw):
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    s = columns(**kw)
    rec = quantizer_output(W, X, s)
    tensors, spec = sq.pack(rec, s)
    assert spec["layout"] == "columns"
    assert torch.equal(kernels.dequantize(tensors, spec), rec.weight)
    x = torch.randn(3, 32, dtype=torch.float64)
    assert torch.allclose(kernels.reference_matmul(x.float(), tensors, spec).double(), x @ rec.weight.double().T,
                          rtol=1e-5, atol=1e-5)


def test_columns_bits_come_from_the_bytes():
    """out 8, in 32 in groups of 24 + 8, salient 0.2 -> K = 6 columns, blocks of 4 rows, fp8 scales. Per row:
    26 signs -> 4 bytes, 6 × 4-bit codes -> 3 bytes, μ, α, scale × 2 groups -> 6 bytes, 2 × 4-bit zeros -> 1 byte;
    2 blocks × 4 bytes of column bitmap. (8 × 14 + 8) bytes = 120 bytes = 3.75 bits per weight."""
    W, X = torch.randn(8, 32), correlated_inputs()
    s = columns(block_rows=4, scales="fp8")
    tensors, spec = sq.pack(quantizer_output(W, X, s), s)
    bits = sq.linear_bits(tensors, spec)
    assert spec["k"] == 6 and bits["bytes"] == 120 and bits["total"] == 3.75
    assert bits["payload"] == (26 + 6 * 4) / 32
    assert bits["scales"] == (6 + 1) * 8 / 32


def test_a_damaged_column_bitmap_is_named():
    X = correlated_inputs()
    s = columns(block_rows=4)
    tensors, spec = sq.pack(quantizer_output(torch.randn(8, 32), X, s), s)
    tensors["columns"][1, 0] ^= 1                               # block 1 now marks 5 or 7 columns
    with pytest.raises(ValueError, match="row-block 1 marks [57] salient columns, expected 6"):
        kernels.dequantize(tensors, spec)


def test_fp8_parameters_are_a_power_of_two_times_an_e4m3_value():
    X = correlated_inputs(d=32, seed=3)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(6)) * 0.05
    q = quantizer_output(W, X, columns(block_rows=4, scales="fp8", column_scale=True))
    unit = 2.0 ** q.unit_exp
    assert unit * 256 >= W.abs().max() > unit * 128                 # the largest |w| maps into (128, 256]
    for p in (q.params.mu, q.params.alpha, q.params.scale):
        assert torch.equal((p / unit).to(torch.float8_e4m3fn).float() * unit, p)
    assert torch.equal(q.colscale.to(torch.float8_e4m3fn).float(), q.colscale)


# -----------------------------------------------------------------------------
# files: version 2 written, read by eval.py; version 1 still written by the paper preset

def test_the_default_writes_version_2_that_eval_reads(capsys, tiny_gguf):
    d = tiny_gguf
    rc, out, err = run_main(capsys, *quantize_args(d, d / "v2.safetensors"), "--block-rows", 4, "--json")
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    with safe_open(str(d / "v2.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["squeeze10"])
        linear_bytes = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in f.keys()
                           if n.rsplit(".", 1)[0] in info["linears"])
    assert info["version"] == 2 and all(spec["layout"] == "columns" for spec in info["linears"].values())
    assert report["totals"]["bits_per_linear_weight"]["total"] == pytest.approx(
        8 * linear_bytes / report["totals"]["linear_weights"], abs=1e-3)
    rc = ev.main(["--ckpt", str(d / "v2.safetensors"), "--text", str(d / "calib.txt"), "--seqlen", "32",
                  "--windows", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    m = llama.load_checkpoint(d / "v2.safetensors")
    wq = m.layers[0].attention.wq
    mask = kernels.salient_columns(wq.packed(), wq.spec)      # (32, 32): 8 blocks of 4 rows
    assert wq.spec["block_rows"] == 4 and mask.sum(1).eq(wq.spec["k"]).all()
    assert all((mask[r0:r0 + 4] == mask[r0]).all() for r0 in range(0, 32, 4))


def test_the_paper_preset_still_writes_version_1(capsys, tiny_gguf):
    d = tiny_gguf
    rc, out, err = run_main(capsys, *quantize_args(d, d / "v1.safetensors"), "--preset", "paper")
    assert rc == 0, err
    with safe_open(str(d / "v1.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["squeeze10"])
    assert info["version"] == 1 and all(spec["layout"] == "trits" for spec in info["linears"].values())
    m = llama.load_checkpoint(d / "v1.safetensors")
    assert m.layers[0].attention.wq._cpu is not None          # the numba kernels take version 1 ...
    m = llama.load_checkpoint(d / "v1.safetensors", backend="reference")
    assert m.layers[0].attention.wq._cpu is None              # ... and repack it only for the numba backend


@pytest.mark.parametrize("name", ["layers.0.attention.wq.columns", "layers.0.attention.wq.binary",
                                  "layers.1.feed_forward.w2.colscale", "layers.1.feed_forward.w1.signs"])
def test_a_flipped_bit_in_a_version_2_file_is_named(capsys, tiny_gguf, tmp_path, name):
    d = tiny_gguf
    rc, _, err = run_main(capsys, *quantize_args(d, tmp_path / "v2.safetensors"), "--block-rows", 4)
    assert rc == 0, err
    raw = (tmp_path / "v2.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    bad = bytearray(raw)
    bad[8 + n + (begin + end) // 2] ^= 0x04
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(llama.CheckpointError, match=f"{name}: its bytes do not match the sha256 checksum"):
        llama.load_checkpoint(tmp_path / "bad.safetensors")


# -----------------------------------------------------------------------------
# the clip search of the salient grid

def test_clip_search_picks_the_candidate_range_with_the_least_error():
    """Against a brute force written here: for each row, every shrunk min–max range in CLIP_SHRINKS made into a
    3-bit grid by hand (fp16 step, integer zero point), the salient weights rounded onto it, the squared error
    summed; fit_grid(clip=True) must return the best one's step and zero."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 16, generator=g)
    salient = torch.rand(6, 16, generator=g) < 0.5
    maxq = 7
    scale, zero = sq.fit_grid(w, salient, maxq, clip=True)
    plain_scale, plain_zero = sq.fit_grid(w, salient, maxq)
    for r in range(6):
        v = w[r][salient[r]].double()
        hi, lo = max(v.max().item(), 0.0), min(v.min().item(), 0.0)
        errors = []
        for shrink in sq.CLIP_SHRINKS:
            step = float(torch.tensor((hi - lo) * shrink / maxq).half())
            z = min(max(round(-lo * shrink / step), 0), maxq)
            q = ((v / step).round() + z).clamp(0, maxq)
            errors.append((((q - z) * step - v) ** 2).sum().item())
        k = min(range(len(errors)), key=errors.__getitem__)   # the first of equal errors, as fit_grid keeps
        assert scale[r].item() == pytest.approx(float(torch.tensor((hi - lo) * sq.CLIP_SHRINKS[k] / maxq).half()))
        assert zero[r].item() == min(max(round(-lo * sq.CLIP_SHRINKS[k] / scale[r].item()), 0), maxq)
        assert errors[k] <= errors[0]                          # never worse than min–max
    assert (scale < plain_scale).any()                         # some row clips
