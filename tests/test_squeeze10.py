"""squeeze10.py: GPTQ, PBAR, the salient mask, binarization, FIAS, packing, the CLI, determinism, bad input.

References are computed here independently: float64 objectives, closed-form least squares, hand-made bytes.
Groups of 24 columns make the tiny model's 32 inputs a full group and a narrow one (24 + 8), as SmolLM2's 576
inputs are 4 × 128 + 64.
"""
import dataclasses
import copy
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import data
import eval as ev
import kernels
import model as llama
import squeeze10 as sq
from tools import cli, synthetic
from conftest import ROOT, TINY, random_state, write_gguf

G = 24


def hessian(X):
    return 2 * X.T @ X / X.shape[0]


def damped(H, damp=0.01):
    return H + damp * H.diag().mean() * torch.eye(H.shape[0])


def correlated_inputs(n=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5 * torch.randn(d, generator=g)


def paper(**changes) -> sq.Settings:
    """The paper's preset (format version 1) with some fields changed."""
    return dataclasses.replace(sq.PRESETS["paper"], **changes)


def grid_gptq(W, U, bits, salient=None, compensate=True):
    """GPTQ onto a `bits`-bit grid everywhere (salient None), or mixed with μ ± α where salient is False."""
    salient = torch.ones(W.shape, dtype=torch.bool) if salient is None else salient
    return sq.gptq(W, U, salient, bits, G, compensate=compensate)


def quantizer_output(W, X, s: sq.Settings):
    """quantize_linears on one linear with X as both streams (FIAS has nothing to re-fit)."""
    stats = sq.Stats(s.fias)
    stats.add(X, X)
    return sq.quantize_linears([W], stats, s)[0]


# -----------------------------------------------------------------------------
# stage 1: GPTQ

def test_grid_rounding_is_min_max_round_to_nearest():
    """Without compensation, every row-group is rounded to nearest on GPTQ's [min(w,0), max(w,0)] grid."""
    W = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    U = torch.eye(32)
    Q = grid_gptq(W, U, 3, compensate=False)[0]
    for g0 in (0, 24):
        w = W[:, g0:g0 + G].double()
        lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 7).half().double()
        zero = (-lo / scale).round()
        ref = scale * ((w / scale).round() + zero).clamp(0, 7) - scale * zero
        assert torch.allclose(Q[:, g0:g0 + G].double(), ref, atol=1e-6)


def test_gptq_lowers_the_hessian_weighted_error():
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    H = damped(hessian(X))
    U = sq.inverse_cholesky(H)
    gptq = grid_gptq(W, U, 3)[0]
    rtn = grid_gptq(W, U, 3, compensate=False)[0]

    def err(Q):  # ‖(W − Q)·Xᵀ‖² in float64
        return ((W - Q).double() @ X.double().T).pow(2).sum().item()
    assert err(gptq) < 0.7 * err(rtn)


def test_an_already_quantized_layer_is_a_fixed_point():
    """Weights already on a 4-bit grid (zero inside the range, both ends used) come back unchanged, bit for
    bit, with GPTQ's compensation on: the errors are zero, so nothing moves."""
    g = torch.Generator().manual_seed(3)
    out = 8
    codes = torch.randint(0, 16, (out, 32), generator=g)
    codes[:, 0], codes[:, 1], codes[:, 24], codes[:, 25] = 0, 15, 0, 15
    scale = (torch.rand(out, 2, generator=g) * 0.1 + 0.01).half().float()
    zero = torch.randint(1, 15, (out, 2), generator=g).float()
    W = torch.cat([scale[:, :1] * (codes[:, :24] - zero[:, :1]), scale[:, 1:] * (codes[:, 24:] - zero[:, 1:])], 1)
    U = sq.inverse_cholesky(damped(hessian(correlated_inputs())))
    Wq, got_codes, P = grid_gptq(W, U, 4)
    assert torch.equal(Wq, W)
    assert torch.equal(got_codes.long(), codes) and torch.equal(P.scale, scale) and torch.equal(P.zero, zero)
    # a binary row-group whose + and − weights balance is a fixed point of stage 3 as well
    Wb = torch.where(torch.arange(32) % 2 == 0, 0.75, 0.25).repeat(out, 1)
    mask = torch.zeros(out, 32, dtype=torch.bool)
    assert torch.equal(grid_gptq(Wb, U, 4, mask)[0], Wb)


# -----------------------------------------------------------------------------
# stage 2: PBAR, and the mask

def test_pbar_on_a_hand_computed_row_group():
    W = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    d, r = torch.ones(4), torch.tensor([1.0, 2.0, 1.0, 1.0])
    # μ = 3, α = mean|w − μ| = 1.5: binarized [1.5, 1.5, 4.5, 4.5], Δ = [0.5, −0.5, 1.5, −1.5]
    V, B = torch.tensor([1.0, 4.0, 9.0, 36.0]), torch.tensor([0.5, 1.0, 1.5, 1.5])
    M = sq.pbar_salience(W, d, r, lam=2.0, group_size=4)
    assert torch.allclose(M[0], V / V.mean() + 2.0 * B / B.mean())
    assert torch.allclose(sq.pbar_salience(W, d, r, lam=2.0, group_size=4, pbar=False)[0], V)


def test_pbar_with_lambda_zero_ranks_as_the_hessian_term():
    g = torch.Generator().manual_seed(4)
    W, d, r = torch.randn(12, 32, generator=g), torch.rand(32, generator=g) + 0.1, torch.rand(32, generator=g)
    m0 = sq.salient_mask(sq.pbar_salience(W, d, r, 0.0, G), 0.2, G)
    mv = sq.salient_mask(sq.pbar_salience(W, d, r, 0.0, G, pbar=False), 0.2, G)
    assert torch.equal(m0, mv)
    assert not torch.equal(m0, sq.salient_mask(sq.pbar_salience(W, d, r, 100.0, G), 0.2, G))


def test_mask_keeps_exactly_k_largest_per_row_group():
    M = torch.rand(10, 32, generator=torch.Generator().manual_seed(5))
    mask = sq.salient_mask(M, 0.2, G)
    for g0, width, k in ((0, 24, 5), (24, 8, 2)):  # round(0.2 · 24) = 5, round(0.2 · 8) = 2
        m, s = M[:, g0:g0 + width], mask[:, g0:g0 + width]
        assert (s.sum(1) == k).all()
        assert (torch.where(s, m, torch.inf).amin(1) > torch.where(s, -torch.inf, m).amax(1)).all()
    assert kernels.salient_count(0.2, 128) == 26 and kernels.salient_count(0.2, 64) == 13


# -----------------------------------------------------------------------------
# stage 3: binarization and the mixed pass

def test_binarized_weights_take_two_values_per_row_group_and_salient_ones_sit_on_the_grid():
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(6))
    rec = quantizer_output(W, X, paper(group_size=G, fias="off"))
    Wh, mask, P = rec.weight, rec.salient, rec.params
    for gi, (g0, width) in enumerate(((0, 24), (24, 8))):
        for i in range(16):
            w, m = Wh[i, g0:g0 + width], mask[i, g0:g0 + width]
            assert len(torch.unique(w[~m])) == 2
            assert set(torch.unique(w[~m]).tolist()) == {P.mu[i, gi].item() + P.alpha[i, gi].item(),
                                                        P.mu[i, gi].item() - P.alpha[i, gi].item()}
            code = w[m] / P.scale[i, gi] + P.zero[i, gi]
            assert torch.allclose(code, code.round(), atol=1e-4) and code.min() > -0.5 and code.max() < 15.5


def mixed_layer(seed=10, out=12, bits=3):
    """A stage-3 result to refine: GPTQ of a mixed layer (fp8 parameters, column scales) and its damped H."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, 32, generator=g)
    H = damped(hessian(correlated_inputs(seed=seed)))
    salient = torch.zeros(out, 32, dtype=torch.bool)
    salient[:, torch.randperm(32, generator=g)[:10]] = True
    unit = torch.full((out,), 2.0 ** sq.fp8_unit_exp(W))
    c = sq.column_scales(W, salient, G, torch.float8_e4m3fn).expand(out, -1)
    Wh, codes, P = sq.gptq(W, sq.inverse_cholesky(H), salient, bits, G, unit, c, clip=True)
    return W, H, salient, unit, c, Wh, codes, P


def objective(W, Wq, H):
    """f = Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ in float64, per row."""
    E = (W - Wq).double()
    return (E @ H.double() * E).sum(1)


def decoded(codes, salient, P, c):
    col = torch.arange(codes.shape[1]) // G
    return torch.where(salient, kernels.grid_weights(codes.float(), P.scale[:, col], P.zero[:, col]),
                       kernels.binary_weights(codes == 1, P.mu[:, col], P.alpha[:, col], c))


@pytest.mark.parametrize("compiled", [True, False])
def test_coordinate_descent_ends_where_no_single_weight_can_move_down(compiled):
    """Swept until nothing moves, every weight is at its best value with the others held: tried here by
    brute force, every other code of every salient weight and the other sign of every binary one, f in
    float64. Both twins: the compiled row sweep (kernels.descend_rows) and the torch column sweep."""
    W, H, salient, unit, c, Wh, codes, P = mixed_layer()
    Wh, codes = Wh.clone(), codes.clone()
    before = objective(W, Wh, H)
    for _ in range(50):
        old = codes.clone()
        sq.descend_codes(W, Wh, codes, salient, P, H, 7, G, c, compiled=compiled)
        if torch.equal(old, codes):
            break
    assert torch.equal(Wh, decoded(codes, salient, P, c))           # the values are the codes' values
    after = objective(W, Wh, H)
    assert (after <= before + 1e-9).all() and after.sum() < before.sum()
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            for alt in (range(8) if salient[i, j] else (1 - codes[i, j].item(),)):
                trial = codes.clone()
                trial[i, j] = alt
                assert objective(W, decoded(trial, salient, P, c), H)[i] >= after[i] - 1e-6 * after[i]


@pytest.mark.parametrize("seed", [13, 14])
def test_descent_twins_make_the_same_moves(seed):
    """One sweep by rows (compiled) and one by columns (torch, lazy updates of g) visit the weights in the same
    order per row, so they choose the same codes; with column scales and without."""
    W, H, salient, unit, c, Wh, codes, P = mixed_layer(seed=seed, out=40)
    for colscale in (c, None):
        if colscale is None:                   # a start whose values are the codes' without column scales
            Wh = decoded(codes, salient, P, torch.ones_like(c))
        results = []
        for compiled in (True, False):
            W_hat, code = Wh.clone(), codes.clone()
            sq.descend_codes(W, W_hat, code, salient, P, H, 7, G, colscale, compiled=compiled)
            results.append((W_hat, code))
        (W1, c1), (W2, c2) = results
        assert not torch.equal(c1, codes)      # something moved
        assert torch.equal(c1, c2) and torch.equal(W1, W2)


def test_refit_is_the_rows_least_squares_rounded_and_never_worse():
    """μ, α and scale for the codes held fixed: each accepted row's parameters are the fp8 rounding of the
    float64 least squares solved here from the dense basis; no row's f goes up."""
    W, H, salient, unit, c, Wh, codes, P = mixed_layer(seed=11)
    W2, P2 = sq.refit_params(W, Wh, codes, salient, P, H, G, unit, c)
    assert torch.equal(W2, decoded(codes, salient, P2, c))
    before, after = objective(W, Wh, H), objective(W, W2, H)
    assert (after <= before).all() and after.sum() < 0.99 * before.sum()
    moved = 0
    for i in range(W.shape[0]):
        basis = []                                         # ŵ_i = basis @ θ, θ = (μ, α, scale) per row-group
        for g0, width in ((0, 24), (24, 8)):
            cols = torch.zeros(32, dtype=torch.bool)
            cols[g0:g0 + width] = True
            b, s = cols & ~salient[i], cols & salient[i]
            basis += [b.double(), b * (2 * codes[i].double() - 1) * c[i].double(),
                      s * (codes[i].double() - P.zero[i, g0 // G].double())]
        B = torch.stack(basis, 1)                          # (32, 6)
        used = B.abs().sum(0) > 0
        A = B[:, used].T @ H.double() @ B[:, used]
        theta = torch.linalg.solve(A, B[:, used].T @ H.double() @ W[i].double())
        if after[i] == before[i]:
            continue                                       # kept its old parameters
        moved += 1
        got = torch.stack([P2.mu[i], P2.alpha[i], P2.scale[i]], 1).reshape(-1)[used].double()
        assert torch.allclose(got, theta, rtol=0.07, atol=1e-3 * unit[i].item())   # fp8: 3 mantissa bits
    assert moved > 0


def test_refine_lowers_the_objective_and_round_trips_through_the_packed_file():
    W, H, salient, unit, c, Wh, codes, P = mixed_layer(seed=12)
    f0 = objective(W, Wh, H).sum()
    costs = [sq.refine(W, Wh, codes, salient, P, H, 7, G, rounds, unit, c) for rounds in (0, 1, 2)]
    fs = [objective(W, r[0], H).sum() for r in costs]
    assert fs[0] < f0 and fs[1] < fs[0] and fs[2] <= fs[1]
    assert torch.equal(Wh, sq.gptq(W, sq.inverse_cholesky(H), salient, 3, G, unit, c, clip=True)[0])  # not moved
    W2, codes2, P2 = costs[1]
    q = sq.QuantizedLinear(W2, codes2, salient, P2, sq.fp8_unit_exp(W), c[0])
    s = dataclasses.replace(sq.Settings(), group_size=G, block_rows=None)
    tensors, spec = sq.pack(q, s)
    assert torch.equal(kernels.dequantize(tensors, spec), W2)


# -----------------------------------------------------------------------------
# FIAS

def test_fias_target_is_exact_where_the_streams_agree():
    X = correlated_inputs()
    W = torch.randn(8, 32)
    H = hessian(X)
    delta = 0.01 * H.diag().mean()
    assert torch.allclose(sq.fias_target(W, damped(H), H, delta), W, atol=1e-5, rtol=0)


def test_fias_target_solves_the_two_stream_least_squares():
    """W* = argmin ‖W·X_fpᵀ − Ŵ·X_qᵀ‖² + (δ·n/2)‖W − Ŵ‖², solved here as one stacked least-squares problem."""
    X_fp = correlated_inputs(seed=7).double()
    X_q = X_fp + 0.3 * torch.randn(X_fp.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    W = torch.randn(8, 32, dtype=torch.float64)
    n = X_q.shape[0]
    H = hessian(X_q)
    delta = 0.01 * H.diag().mean()
    A = torch.cat([X_q, (delta * n / 2).sqrt() * torch.eye(32, dtype=torch.float64)])   # (n + in, in)
    B = torch.cat([X_fp @ W.T, (delta * n / 2).sqrt() * W.T])                              # (n + in, out)
    ref = torch.linalg.lstsq(A, B).solution.T
    got = sq.fias_target(W.float(), damped(H).float(), (2 * X_fp.T @ X_q / n).float(), delta.item())
    assert torch.allclose(got.double(), ref, atol=1e-4)


@pytest.mark.parametrize("fias", ["target", "input", "off"])
def test_fias_modes_see_the_documented_activations(monkeypatch, fias):
    """On a 2-block toy model: block 1's q/k/v statistics come from the streams METHOD.md names, recomputed
    here from the full-precision block 0 and from block 0 as dequantized from its packed bytes."""
    args = llama.ModelArgs(**TINY)
    m = llama.build_model(args, {k: (lambda v=v: v) for k, v in random_state(args).items()}, "toy")
    tokens = torch.randint(0, args.vocab_size, (4, 16), generator=torch.Generator().manual_seed(9))
    seen, real = [], sq.quantize_linears
    def spy(w, stats, s):                                   # a copy: quantize_linears frees the sums it used
        seen.append(copy.deepcopy(stats))
        return real(w, stats, s)
    monkeypatch.setattr(sq, "quantize_linears", spy)
    s = paper(group_size=G, fias=fias)
    result = sq.quantize(m, tokens, s, log=lambda msg: None)
    packed, specs = result.packed, result.specs
    assert len(seen) == 2 * len(sq.STEPS)
    freqs = llama.precompute_freqs_cis(args.dim // args.n_heads, 16, args.rope_theta)
    x0 = m.tok_embeddings(tokens)
    with torch.no_grad():
        fp_out = m.layers[0](x0, freqs)
        q_block = llama.TransformerBlock(args)
        q_block.load_state_dict(m.layers[0].state_dict())
        for names in sq.STEPS:
            for name in names:
                key = f"layers.0.{name}"
                q_block.get_submodule(name).weight.copy_(kernels.dequantize(packed[key], specs[key]))
        q_out = q_block(x0, freqs)
        X_fp = m.layers[1].attention_norm(fp_out).reshape(-1, args.dim)
        X_q = m.layers[1].attention_norm(q_out).reshape(-1, args.dim)
    assert not torch.allclose(X_fp, X_q, atol=1e-3)        # the streams really differ after block 0
    stats = seen[len(sq.STEPS)]                             # block 1, step 0: wq, wk, wv
    X = X_fp if fias == "input" else X_q
    assert torch.allclose(stats.hessian(), hessian(X), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats.ranges(), X.amax(0) - X.amin(0), atol=1e-5)
    if fias == "target":
        assert torch.allclose(stats.cross(), 2 * X_fp.T @ X_q / X.shape[0], rtol=1e-4, atol=1e-5)


# -----------------------------------------------------------------------------
# packing

def test_pack_bits_and_trits_by_hand():
    assert kernels.pack_trits(torch.tensor([[2, 1, 0, 0, 1, 2]])).tolist() == [[2 + 3 + 81, 2]]
    assert kernels.pack_bits(torch.tensor([[1, 0, 3]]), 2).tolist() == [[0b110001]]
    assert kernels.unpack_trits(torch.tensor([[86, 2]], dtype=torch.uint8), 6).tolist() == [[2, 1, 0, 0, 1, 2]]
    assert kernels.unpack_bits(torch.tensor([[0b110001]], dtype=torch.uint8), 2, 3).tolist() == [[1, 0, 3]]
    codes = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(10))
    for nbits in (1, 2, 3, 4, 5, 8):
        c = codes % (1 << nbits)
        assert torch.equal(kernels.unpack_bits(kernels.pack_bits(c, nbits), nbits, 11).long(), c)


@pytest.mark.parametrize("preset", ["squeeze10", "pbllm", "gptq2", "gptq3", "gptq4", "xnor"])
def test_pack_then_dequantize_reproduces_the_quantizer_bit_for_bit(preset):
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(11))
    s = dataclasses.replace(sq.PRESETS[preset], group_size=G)
    rec = quantizer_output(W, X, s)
    tensors, spec = sq.pack(rec, s)
    assert torch.equal(kernels.dequantize(tensors, spec), rec.weight)


def test_bits_come_from_the_bytes():
    """out 4, in 32 in groups of 24 + 8, salient 0.2 -> k = 5 + 2, 4-bit: per row 5 + 2 trit bytes, 3 + 1 high
    bytes, 2 × 4 bytes of μ, α, 2 × 2 of scale, 2 of zero = 25 bytes = 6.25 bits per weight."""
    W, X = torch.randn(4, 32), correlated_inputs()
    s = paper(group_size=G, fias="off")
    tensors, spec = sq.pack(quantizer_output(W, X, s), s)
    bits = sq.linear_bits(tensors, spec)
    assert spec["k"] == [5, 2] and bits["total"] == 6.25 and bits["bytes"] == 100
    assert bits["payload"] == (25 + 7 * 4) / 32 and bits["scales"] == (8 + 4 + 2) * 8 / 32


# -----------------------------------------------------------------------------
# the command line: quantize, evaluate, determinism, bad input

@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("s10")
    write_gguf(d / "tiny.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    (d / "calib.txt").write_text("hello world, the quick brown fox. " * 200)
    return d


def run_main(capsys, *argv):
    try:
        rc = sq.main([str(a) for a in argv])
    except SystemExit as e:                # argparse's own errors: one line, exit 2 (cli.Parser)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def quantize_args(d, out, *extra):
    return ["--ckpt", d / "tiny.gguf", "--calib", "text", d / "calib.txt", "--nsamples", 8, "--seqlen", 32,
            "--out", out, *extra]


def test_cli_writes_a_packed_file_that_eval_reads(capsys, tiny_gguf):
    d = tiny_gguf
    rc, out, err = run_main(capsys, *quantize_args(d, d / "q.safetensors"), "--preset", "paper", "--json")
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["layers"]) == 2 * 7
    # the totals are the bytes of the linears' tensors in the file
    with safe_open(str(d / "q.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["squeeze10"])
        linear_bytes = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in f.keys()
                           if n.rsplit(".", 1)[0] in info["linears"])
    assert info["format"] == "squeeze10" and info["version"] == 1
    weights = report["totals"]["linear_weights"]
    assert report["totals"]["bits_per_linear_weight"]["total"] == pytest.approx(8 * linear_bytes / weights, abs=1e-3)
    assert report["totals"]["file_bytes"] == (d / "q.safetensors").stat().st_size
    # eval.py reads it like any checkpoint, and scores exactly the dequantized model
    rc = ev.main(["--ckpt", str(d / "q.safetensors"), "--text", str(d / "calib.txt"), "--seqlen", "32",
                  "--windows", "2", "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    ppl = json.loads(out.strip().splitlines()[-1])["ppl"]
    m = llama.load_checkpoint(d / "q.safetensors")
    ids = data.load_tokenizer(d / "tiny.gguf").encode((d / "calib.txt").read_text(), bos=False)
    assert ppl == pytest.approx(ev.perplexity(m, ev.make_windows(ids, 32, 2))["ppl"], rel=1e-4)
    ref = llama.load_checkpoint(d / "tiny.gguf")
    for i, name in ((0, "attention.wq"), (1, "feed_forward.w2")):  # quantized, not copied
        assert not torch.equal(m.layers[i].get_submodule(name).dequantize(), ref.layers[i].get_submodule(name).weight)
    assert torch.allclose(m.tok_embeddings.weight, ref.tok_embeddings.weight, atol=1e-3)  # fp16 copy


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_a_byte_identical_file(capsys, tiny_gguf):
    d = tiny_gguf
    assert run_main(capsys, *quantize_args(d, d / "a.safetensors"))[0] == 0
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, str(ROOT / "squeeze10.py"), *map(str, quantize_args(d, d / "b.safetensors"))],
                   check=True, env=env, capture_output=True)
    assert sha(d / "a.safetensors") == sha(d / "b.safetensors")
    assert run_main(capsys, *quantize_args(d, d / "c.safetensors", "--seed", 1))[0] == 0
    assert sha(d / "a.safetensors") != sha(d / "c.safetensors")


@pytest.mark.parametrize("flags, message", [
    (["--preset", "bogus"], "--preset bogus: unknown; choose one of squeeze10, paper, pbllm"),
    (["--salient", "0"], "--column-scale: only the columns layout"),          # all binary: no columns to scale
    (["--salient", "1.5"], "--salient 1.5: must be in [0, 1]"),
    (["--salient", "nan"], "--salient nan: must be in [0, 1]"),
    (["--mid-bits", "1"], "--mid-bits 1: must be 2..8, or none"),
    (["--mid-bits", "16"], "--mid-bits 16: must be 2..8, or none"),
    (["--mid-bits", "all"], "argument --mid-bits: 'all' is neither an integer nor none"),
    (["--block-rows", "0"], "--block-rows 0: must be at least 1, or layer"),
    (["--scales", "fp8", "--preset", "paper"], "--scales fp8: only the columns layout"),
    (["--fias", "sometimes"], "--fias sometimes: must be one of target, input, off"),
    (["--calib", "c4"], "--calib c4: expected"),
])
def test_bad_settings_give_one_line_and_no_file(capsys, tiny_gguf, flags, message):
    d = tiny_gguf
    rc, out, err = run_main(capsys, *quantize_args(d, d / "bad.safetensors"), *flags)
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (d / "bad.safetensors").exists()


def test_unwritable_output_gives_one_line_and_no_file(capsys, tiny_gguf, tmp_path):
    d = tiny_gguf
    for out, message in ((tmp_path / "missing" / "q.safetensors", "does not exist"),
                         (tmp_path, "is a directory")):
        rc, _, err = run_main(capsys, *quantize_args(d, out))
        assert rc == 2 and message in err and err.count("\n") == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions: nothing to test there
            rc, _, err = run_main(capsys, *quantize_args(d, locked / "q.safetensors"))
            assert rc == 2 and "cannot write" in err and err.count("\n") == 1
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == [] and not (tmp_path / "missing").exists()


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    def broken(tmp):
        tmp.write_bytes(b"half")
        (tmp.parent / ".tmpABCDEF").write_bytes(b"a writer's own temporary file")
        raise OSError(28, "No space left on device")
    with pytest.raises(cli.WriteError, match="q.safetensors: cannot write: No space left on device"):
        cli.write_atomic(tmp_path / "q.safetensors", broken)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_packed_file_gives_one_line(capsys, tiny_gguf, tmp_path):
    d = tiny_gguf
    assert run_main(capsys, *quantize_args(d, tmp_path / "q.safetensors"), "--preset", "paper")[0] == 0
    raw = (tmp_path / "q.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["squeeze10"])
    meta["linears"]["layers.0.attention.wq"]["k"] = [7]                      # contradicts the tensors' sizes
    header["__metadata__"]["squeeze10"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    (tmp_path / "bad.safetensors").write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + header_len:])
    rc = ev.main(["--ckpt", str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "layers.0.attention.wq" in err and err.count("\n") == 1
    (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) // 2])                       # truncated
    rc = ev.main(["--ckpt", str(tmp_path / "cut.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "cut.safetensors: unreadable safetensors file" in err and err.count("\n") == 1


def test_synthetic_model_runs_the_pipeline(capsys, monkeypatch):
    monkeypatch.setitem(synthetic.SHAPES, "tiny", llama.ModelArgs(**{**TINY, "n_layers": 4}))
    assert synthetic.main(["tiny", "--blocks", "1", "--nsamples", "2", "--seqlen", "16", "--json"]) == 0
    out, err = capsys.readouterr()
    totals = json.loads(out.strip().splitlines()[-1])
    assert "extrapolated to 4 blocks" in err and totals["blocks"] == 1 and totals["model_blocks"] == 4
    assert totals["extrapolated_seconds"] == pytest.approx(4 * totals["quantize_seconds"], rel=0.05, abs=0.2)
    assert math.isfinite(totals["bits_per_linear_weight"]["total"])


def test_presets_are_named_differences_from_the_default():
    """Settings() is the default preset; `--mid-bits none` and `--block-rows layer` say None in words."""
    assert sq.PRESETS["squeeze10"] == sq.Settings() and sq.layout_of(sq.Settings()) == kernels.COLUMNS
    assert sq.layout_of(sq.PRESETS["paper"]) == "trits" and sq.PRESETS["paper"].mid_bits == 4
    given = dict(mid_bits="none", block_rows="layer", salient=None)
    s = cli.settings_from_args(sq, "paper", given)
    assert s.mid_bits is None and s.block_rows is None and s.salient == 0.2


def test_stage3_from_fp_ranks_on_w_mid_but_quantizes_w():
    """--stage3-from fp: stage 1 only decides which weights are salient; stage 3 starts from W itself."""
    X = correlated_inputs()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(12))
    s = paper(group_size=G, fias="off", stage3_from="fp")
    rec = quantizer_output(W, X, s)
    stats = sq.Stats("off")
    stats.add(X, X)
    U = sq.inverse_cholesky(damped(stats.hessian()))         # the same H, bit for bit, as quantize_linears
    W_mid = grid_gptq(W, U, 4)[0]
    mask = sq.salient_mask(sq.pbar_salience(W_mid, U.diag(), X.amax(0) - X.amin(0), s.lam, G), s.salient, G)
    assert torch.equal(rec.salient, mask)
    assert torch.equal(rec.weight, grid_gptq(W, U, 4, mask)[0])
    assert not torch.equal(rec.weight, grid_gptq(W_mid, U, 4, mask)[0])


def test_same_bytes_tells_identical_tensors_from_changed_ones(tmp_path, capsys):
    from safetensors.torch import save_file
    from tools import same_bytes
    t = {"a": torch.arange(6, dtype=torch.uint8), "b": torch.ones(2, 3, dtype=torch.float16)}
    meta = {"squeeze10": json.dumps({"settings": {"x": 1}})}
    save_file(t, str(tmp_path / "one.safetensors"), metadata=meta)
    save_file(t, str(tmp_path / "two.safetensors"), metadata={"squeeze10": json.dumps({"settings": {"x": 2}})})
    assert same_bytes.main([str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")]) == 0
    assert "all identical; metadata fields that differ: settings" in capsys.readouterr().out
    save_file({**t, "b": t["b"].view(torch.int16).float()}, str(tmp_path / "three.safetensors"), metadata=meta)
    assert same_bytes.main([str(tmp_path / "one.safetensors"), str(tmp_path / "three.safetensors")]) == 1
    assert "1 tensors differ: b" in capsys.readouterr().out
    assert same_bytes.main([str(tmp_path / "one.safetensors"), str(tmp_path / "none")]) == 2


def test_activations_in_16_bits_are_held_in_16_bits_and_change_little(monkeypatch):
    """--act-dtype fp16: what the paused passes hold is float16 (half the memory), the statistics float32;
    a rounding of the activations may tip a sign or a salient choice, but the layers' output errors stay
    those of the exact run."""
    args = llama.ModelArgs(**TINY)
    m = llama.build_model(args, {k: (lambda v=v: v) for k, v in random_state(args).items()}, "toy")
    tokens = torch.randint(0, args.vocab_size, (4, 16), generator=torch.Generator().manual_seed(9))
    s = paper(group_size=G)
    exact = sq.quantize(m, tokens, s, log=lambda msg: None)
    held = []
    real_keep = sq.Activations.keep
    monkeypatch.setattr(sq.Activations, "keep", lambda self, t: held.append(real_keep(self, t)) or held[-1])
    half = sq.quantize(m, tokens, s, log=lambda msg: None, acts=sq.Activations(torch.float16))
    assert held and all(t.dtype == torch.float16 for t in held)
    err32 = torch.tensor([r["rel_error"] for r in exact.report])
    err16 = torch.tensor([r["rel_error"] for r in half.report])
    assert not torch.equal(err32, err16)                          # the rounding did reach the quantizer
    assert ((err16 - err32).abs() < 0.15 * err32).all() and (err16.mean() - err32.mean()).abs() < 0.03 * err32.mean()
    with pytest.raises(sq.QuantizationError, match="overflow float16"):
        sq.Activations(torch.float16).keep(torch.tensor([1.0, 1e6]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_paused_pass_holds_what_its_dtype_says_and_yields_the_forward_pass(dtype):
    """block_steps against the model's own forward: the same four inputs and output (float16: within its
    rounding); while paused, a float32 pass holds x and m (fast), a 16-bit one x or h and never m (memory);
    a finished pass holds nothing but its output."""
    args = llama.ModelArgs(**TINY)
    m = llama.build_model(args, {k: (lambda v=v: v) for k, v in random_state(args).items()}, "toy")
    block, acts = m.layers[0], sq.Activations(dtype)
    x = torch.randn(2, 16, args.dim, generator=torch.Generator().manual_seed(3))
    freqs = llama.precompute_freqs_cis(args.dim // args.n_heads, 16, args.rope_theta)
    run = sq.block_steps(block, acts.keep(x), freqs, acts)
    x = acts.use(acts.keep(x))
    seen = []
    block.attention.wo.register_forward_hook(lambda mod, i, o: seen.append(("wo", i[0])))
    block.feed_forward.w2.register_forward_hook(lambda mod, i, o: seen.append(("w2", i[0])))
    first = next(run)
    assert torch.equal(first, block.attention_norm(x))
    wo_in = next(run)
    assert (run.gi_frame.f_locals["m"] is None) == (dtype == torch.float16)
    w1_in, w2_in = next(run), next(run)
    assert "x" not in run.gi_frame.f_locals and run.gi_frame.f_locals["h"].dtype == dtype
    out = next(run)
    assert set(run.gi_frame.f_locals) <= {"block", "freqs_cis", "acts", "mix", "out"}
    seen.clear()
    ref = block(x, freqs)                                     # model.TransformerBlock.forward
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    assert torch.allclose(wo_in, seen[0][1], **tol) and torch.allclose(w2_in, seen[1][1], **tol)
    assert torch.allclose(w1_in, block.ffn_norm(x + block.attention.wo(seen[0][1])), **tol)
    assert torch.allclose(acts.use(out), ref, **tol)


def test_the_streams_advance_chunk_by_chunk_so_the_error_hooks_queue_one_output(monkeypatch):
    """Every pass of a block, the output pass included, runs chunk i of the full-precision stream and then chunk
    i of the quantized one: a linear's full-precision output waits for its twin's at most one chunk (had the
    output pass run every fp chunk first, a 7B w2's outputs for 128 × 2048 tokens would wait: 4 GiB)."""
    monkeypatch.setattr(sq, "CHUNK_TOKENS", 32)                   # 2 windows of 16 tokens a chunk: 4 chunks
    depth = []
    real = sq.OutputErrors.compare

    def compare(self, name):
        hook = real(self, name)

        def measured(module, inputs, output):
            depth.append(len(self.queued[name]))
            return hook(module, inputs, output)
        return measured
    monkeypatch.setattr(sq.OutputErrors, "compare", compare)
    args = llama.ModelArgs(**TINY)
    m = llama.build_model(args, {k: (lambda v=v: v) for k, v in random_state(args).items()}, "toy")
    tokens = torch.randint(0, args.vocab_size, (8, 16), generator=torch.Generator().manual_seed(4))
    sq.quantize(m, tokens, sq.Settings(group_size=G), log=lambda msg: None)
    assert max(depth) == 1 and depth.count(1) == args.n_layers * 7 * 4                # every linear, every chunk


def test_the_default_activations_are_float32_for_small_models_and_16_bits_for_large():
    small = llama.ModelArgs(**TINY)
    assert cli.default_activations(sq, small, 1024, "cpu").dtype == torch.float32
    big = synthetic.SHAPES["llama2-7b"]
    acts = cli.default_activations(sq, big, 128 * 2048, "cpu")
    assert acts.dtype == torch.float16 and acts.held_on == "cpu"
    assert cli.default_activations(sq, big, 1024, "cpu", dtype="bf16").dtype == torch.bfloat16


def test_default_calibration_by_preset_and_model_size():
    """Small models: 128 windows of 512 for the default preset, 32 for the paper preset and the baselines (their
    calibration, hence their bytes, as before); a 7B-sized model: GPTQ's 128 × 2048 for every preset."""
    small = llama.ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, hidden_dim=1536)
    big = llama.ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, hidden_dim=11008)
    cal = cli.default_calibration
    assert (cal(small, sq.PRESETS["squeeze10"]).nsamples, cal(small, sq.PRESETS["squeeze10"]).seqlen) == (128, 512)
    for name in ("paper", "pbllm", "gptq3", "xnor"):
        assert (cal(small, sq.PRESETS[name]).nsamples, cal(small, sq.PRESETS[name]).seqlen) == (32, 512)
        assert (cal(big, sq.PRESETS[name]).nsamples, cal(big, sq.PRESETS[name]).seqlen) == (128, 2048)
    with pytest.raises(sq.SettingsError, match="nsamples 0"):
        cli.check_settings(sq, dataclasses.replace(sq.Settings(), nsamples=0))
