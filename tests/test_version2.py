"""Version 2: the structured salient set (columns shared by blocks of rows), fp8 scales, the closed-form refit.

References are independent of squeeze10.py: the refit is checked against a float64 least-squares solution
built here row by row from an explicit basis, the mask against its definition, the bits against a byte count
done by hand, and every packed layout against the quantizer's own output, bit for bit.
"""
import json
import math

import pytest
import torch
from safetensors import safe_open

import eval as ev
import kernels
import model as llama
import squeeze10 as sq
from test_squeeze10 import G, correlated_inputs, quantizer_output, quantize_args, run_main, tiny_gguf  # noqa: F401


def columns(**kw):
    return sq.replace(sq.PRESETS["paper"], group_size=G, structure="columns", **kw)


# -----------------------------------------------------------------------------
# the structured mask

@pytest.mark.parametrize("block_rows", [0, 1, 4, 5])
def test_column_mask_shares_the_k_best_columns_per_block_of_rows(block_rows):
    M = torch.rand(14, 40, generator=torch.Generator().manual_seed(1))
    mask = sq.column_mask(M, 0.2, block_rows)
    R = block_rows or 14
    K = sq.salient_count(40, 0.2)                           # 8
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
    mask = rec["mask"]
    for r0 in range(0, 16, 4):
        assert (mask[r0:r0 + 4] == mask[r0]).all() and int(mask[r0].sum()) == sq.salient_count(32, 0.2)
    # binary weights take μ ± α of their row-group, salient ones sit on that row-group's grid
    for g0 in range(0, 32, G):
        w, m = rec["weight"][:, g0:g0 + G], mask[:, g0:g0 + G]
        g = g0 // G
        for i in range(16):
            binary = w[i][~m[i]]
            allowed = torch.stack([rec["mu"][i, g] - rec["alpha"][i, g], rec["mu"][i, g] + rec["alpha"][i, g]])
            assert torch.isin(binary, allowed).all()
            codes = w[i][m[i]] / rec["scale"][i, g] + rec["zero"][i, g]
            assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= -1e-4 and codes.max() <= 15 + 1e-4


# -----------------------------------------------------------------------------
# packing: bit for bit, and bits from the bytes

@pytest.mark.parametrize("kw", [dict(block_rows=0), dict(block_rows=4, scales="fp8"), dict(block_rows=5),
                                dict(block_rows=3, scales="fp8", refit=True, salient=0.35, high_bits=3),
                                dict(block_rows=16, scales="fp8", refit=True, high_bits=8),
                                dict(block_rows=4, column_scale=True), dict(block_rows=4, scales="fp8", column_scale=True),
                                dict(block_rows=5, scales="fp8", column_scale=True, refit=True)])
def test_pack_then_dequantize_reproduces_the_columns_quantizer_bit_for_bit(kw):
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    s = columns(**kw)
    rec = quantizer_output(W, X, s)
    tensors, spec = sq.pack_linear(rec, s)
    assert spec["layout"] == "columns"
    assert torch.equal(kernels.dequantize(tensors, spec), rec["weight"])
    x = torch.randn(3, 32, dtype=torch.float64)
    assert torch.allclose(kernels.reference_matmul(x.float(), tensors, spec).double(), x @ rec["weight"].double().T,
                          rtol=1e-5, atol=1e-5)


def test_columns_bits_come_from_the_bytes():
    """out 8, in 32 in groups of 24 + 8, salient 0.2 -> K = 6 columns, blocks of 4 rows, fp8 scales. Per row:
    26 signs -> 4 bytes, 6 × 4-bit codes -> 3 bytes, μ, α, scale × 2 groups -> 6 bytes, 2 × 4-bit zeros -> 1 byte;
    2 blocks × 4 bytes of column bitmap. (8 × 14 + 8) bytes = 120 bytes = 3.75 bits per weight."""
    W, X = torch.randn(8, 32), correlated_inputs()
    s = columns(block_rows=4, scales="fp8")
    tensors, spec = sq.pack_linear(quantizer_output(W, X, s), s)
    bits = sq.linear_bits(tensors, spec)
    assert spec["k"] == 6 and bits["bytes"] == 120 and bits["total"] == 3.75
    assert bits["payload"] == (26 + 6 * 4) / 32
    assert bits["scales"] == (6 + 1) * 8 / 32


def test_a_damaged_column_bitmap_is_named():
    X = correlated_inputs()
    s = columns(block_rows=4)
    tensors, spec = sq.pack_linear(quantizer_output(torch.randn(8, 32), X, s), s)
    tensors["columns"][1, 0] ^= 1                               # block 1 now marks 5 or 7 columns
    with pytest.raises(ValueError, match="row-block 1 marks [57] salient columns, expected 6"):
        kernels.dequantize(tensors, spec)


# -----------------------------------------------------------------------------
# the refit

def explicit_basis(codes, mask, zero, G):
    """B_i (in, 3·ng) for one row, column by column, as METHOD.md defines it."""
    n = codes.shape[0]
    ng = math.ceil(n / G)
    B = torch.zeros(n, 3 * ng, dtype=torch.float64)
    for j in range(n):
        g = j // G
        if mask[j]:
            B[j, 2 * ng + g] = codes[j] - zero[g]
        else:
            B[j, g] = 1
            B[j, ng + g] = 1 if codes[j] == 1 else -1
    return B


def test_refit_solves_the_least_squares_problem_and_never_raises_the_objective():
    X = correlated_inputs(d=32)
    H = 2 * X.T @ X / X.shape[0]
    H += 0.01 * H.diag().mean() * torch.eye(32)
    W = torch.randn(6, 32, generator=torch.Generator().manual_seed(4))
    mask = sq.column_mask(torch.rand(6, 32, generator=torch.Generator().manual_seed(5)), 0.25, 3)
    q = sq.RowGroupQuantizer(W.shape, G, 4, mask)
    W_hat = sq.gptq(W.clone(), sq.inverse_cholesky(H), q, G)
    A, b = sq.refit_system(W, H, q.codes, mask, q.zero, G)
    L = torch.linalg.cholesky(H.double())                       # ‖Lᵀ(w − Bp)‖² = (w − Bp)ᵀH(w − Bp)
    for i in range(6):
        B = explicit_basis(q.codes[i].double(), mask[i], q.zero[i].double(), G)
        assert torch.allclose(A[i], B.T @ H.double() @ B, rtol=1e-9, atol=1e-9)
        used = B.abs().sum(0) > 0
        p = torch.linalg.lstsq(L.T @ B[:, used], L.T @ W[i].double()).solution
        assert torch.allclose(torch.linalg.solve(A[i][used][:, used], b[i][used]), p, rtol=1e-6, atol=1e-8)

    def objective(Wh):
        D = (W - Wh).double()
        return ((D @ H.double()) * D).sum(1)
    before = objective(W_hat)
    after = objective(sq.refit(W, H, q, mask, G))
    assert (after <= before + 1e-9).all() and after.sum() < before.sum()


def test_refit_rounds_to_fp8_and_still_does_not_raise_the_objective():
    X = correlated_inputs(d=32, seed=3)
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(6))
    plain = quantizer_output(W, X, columns(block_rows=4, scales="fp8"))
    fitted = quantizer_output(W, X, columns(block_rows=4, scales="fp8", refit=True))
    assert torch.equal(plain["codes"], fitted["codes"]) and torch.equal(plain["mask"], fitted["mask"])
    H = 2 * X.T @ X / X.shape[0]
    H += 0.01 * H.diag().mean() * torch.eye(32)

    def objective(Wh):
        D = (W - Wh).double()
        return ((D @ H.double()) * D).sum(1)
    assert (objective(fitted["weight"]) <= objective(plain["weight"]) + 1e-9).all()
    unit = fitted["unit"][:, None]
    for p in (fitted["mu"], fitted["alpha"], fitted["scale"]):   # every parameter is unit × an e4m3 value
        assert torch.equal((p / unit).to(torch.float8_e4m3fn).float() * unit, p)


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


def test_block_tuning_writes_a_file_that_reproduces_its_weights(capsys, tiny_gguf):
    d = tiny_gguf
    rc, out, err = run_main(capsys, *quantize_args(d, d / "tuned.safetensors"), "--structure", "columns", "--block-rows", 4,
                            "--scales", "fp8",
                            "--tune-steps", 5, "--json")
    assert rc == 0, err
    m = llama.load_checkpoint(d / "tuned.safetensors")
    for lin in (m.layers[0].attention.wq, m.layers[1].feed_forward.w2):
        W = lin.dequantize()
        assert torch.isfinite(W).all() and lin.spec["scales"] == "fp8"


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
