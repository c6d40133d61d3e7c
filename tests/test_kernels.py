"""The packed format and the mixed 1/4-bit matmul: pack/unpack round trips, the dequantization arithmetic, every
backend against a float64 dense product, QuantLinear, packed models, the benchmark's plumbing.

Random packed linears are written with kernels.pack_bits/pack_trits (exact salient counts), independently of
the readers under test. The Triton kernel runs here under TRITON_INTERPRET=1 (set in conftest.py).
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as ev
import kernels
import model as llama
import squeeze10 as sq
from conftest import ROOT, TINY, write_gguf, TRITON_DEVICE, on_triton_device
from tools import bench

LAYOUTS = [("trits", 4), ("trits", 8), ("trits", 3), ("signs", 1), ("grid", 2), ("grid", 5)]
SHAPES = [(40, 200), (33, 576), (17, 128)]          # in = 200, 576: the last row-group is narrower (72, 64)


def random_linear(out, n_in, layout="trits", high_bits=4, salient=0.2, group_size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    widths = kernels.group_widths(n_in, group_size)
    ks = [0 if layout == "signs" else w if layout == "grid" else kernels.salient_count(salient, w) for w in widths]
    states, high = [], []
    for w, k in zip(widths, ks):
        salient_mask = torch.rand(out, w, generator=g).argsort(1) < k
        sign = torch.randint(0, 2, (out, w), generator=g)
        if layout == "trits":
            states.append(kernels.pack_trits(torch.where(salient_mask, 2, sign)))
        elif layout == "signs":
            states.append(kernels.pack_bits(sign, 1))
        if k:
            high.append(kernels.pack_bits(torch.randint(0, 2 ** high_bits, (out, k), generator=g), high_bits))
    ng = len(widths)
    t = {}
    if layout != "grid":
        t[layout] = torch.cat(states, 1)
        mu_alpha = torch.stack([torch.randn(out, ng, generator=g) * 0.01, torch.rand(out, ng, generator=g) * 0.05], -1)
        t["binary"] = mu_alpha.half()
    if layout != "signs":
        t["high"] = torch.cat(high, 1)
        t["scale"] = (torch.rand(out, ng, generator=g) * 0.01 + 1e-3).half()
        t["zero"] = torch.randint(0, 2 ** high_bits, (out, ng), generator=g).to(torch.uint8)
    spec = dict(shape=[out, n_in], group_size=group_size, high_bits=high_bits, layout=layout, k=ks)
    kernels.check_spec(spec, t)
    return t, spec


def rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


def backend_matmul(backend, x, t, spec):
    if backend == "reference":
        return kernels.reference_matmul(x, t, spec)
    if backend == "numba":
        return kernels.numba_matmul(x, kernels.cpu_layout(t, spec))
    return on_triton_device(kernels.triton_matmul, x, t, spec)


# -----------------------------------------------------------------------------
# the packed format and the dequantization arithmetic

@pytest.mark.parametrize("layout,high_bits", LAYOUTS)
def test_packing_what_unpack_groups_returns_gives_the_same_bytes(layout, high_bits):
    for i, (out, n_in) in enumerate(SHAPES):
        t, spec = random_linear(out, n_in, layout, high_bits, seed=i)
        codes, mask, mu, alpha, scale, zero = kernels.unpack_groups(t, spec)
        assert codes.shape == mask.shape == (out, n_in) and mu.shape == (out, len(kernels.group_widths(n_in, 128)))
        again = kernels.pack_groups(spec, codes, mask, mu, alpha, scale, zero)
        assert set(again) == set(t) and all(torch.equal(again[name], t[name]) for name in t), (layout, out, n_in)


def test_the_dequantization_arithmetic_by_hand():
    assert kernels.grid_weights(torch.tensor([3.0, 0.0]), torch.tensor(0.5), torch.tensor(1.0)).tolist() == [1.0, -0.5]
    plus, mu, alpha = torch.tensor([True, False]), torch.tensor(0.25), torch.tensor(0.5)
    assert kernels.binary_weights(plus, mu, alpha).tolist() == [0.75, -0.25]
    assert kernels.binary_weights(plus, mu, alpha, torch.tensor([2.0, 1.0])).tolist() == [1.25, -0.25]
    assert [kernels.salient_count(0.2, w) for w in (128, 72, 64)] == [26, 14, 13]
    assert kernels.salient_count(0.5, 5) == 3                          # half rounds up


def test_the_lookup_table_identity_gives_the_signed_sums():
    x = torch.randn(203, generator=torch.Generator().manual_seed(0))   # 203: the last byte holds 3 activations
    plus = torch.rand(7, 203, generator=torch.Generator().manual_seed(1)) < 0.5
    dense = torch.where(plus, 1.0, -1.0).double() @ x.double()
    assert torch.allclose(kernels.lookup_signed_sums(x, plus).double(), dense, atol=1e-4)


# -----------------------------------------------------------------------------
# the kernels against float64

@pytest.mark.parametrize("layout,high_bits", LAYOUTS)
@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
def test_every_backend_matches_a_float64_dense_product(backend, layout, high_bits):
    shapes = SHAPES if backend != "triton" else SHAPES[:2]   # the interpreter is slow
    for i, (out, n_in) in enumerate(shapes):
        t, spec = random_linear(out, n_in, layout, high_bits, seed=i)
        W = kernels.dequantize(t, spec).double()
        for batch in (1, 3, 17):
            x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(batch))
            y = backend_matmul(backend, x, t, spec)
            assert y.shape == (batch, out) and y.dtype == torch.float32
            assert rel_err(y, x.double() @ W.T) < 1e-5, (backend, layout, out, n_in, batch)


def test_a_hand_computed_product():
    # one row-group of 5: states (salient, +, -, -, +); salient code 3 on scale 0.5, zero 1 -> 1.0;
    # μ = 0.25, α = 0.5 -> + is 0.75, - is -0.25.  W = [1, 0.75, -0.25, -0.25, 0.75], x = [1, 2, 3, 4, 5]
    t = dict(trits=kernels.pack_trits(torch.tensor([[2, 1, 0, 0, 1]])), high=kernels.pack_bits(torch.tensor([[3]]), 4),
             binary=torch.tensor([[[0.25, 0.5]]]).half(), scale=torch.tensor([[0.5]]).half(),
             zero=torch.tensor([[1]], dtype=torch.uint8))
    spec = dict(shape=[1, 5], group_size=5, high_bits=4, layout="trits", k=[1])
    x = torch.tensor([[1.0, 2, 3, 4, 5]])
    for backend in ("reference", "numba", "triton"):
        assert backend_matmul(backend, x, t, spec).item() == pytest.approx(1 + 1.5 - 0.75 - 1 + 3.75, abs=1e-6)


def test_the_tiled_path_for_large_batches_matches_too():
    t, spec = random_linear(70, 300)
    lay = kernels.cpu_layout(t, spec)
    x = torch.randn(2 * kernels.SMALL_BATCH + 1, 300)
    for tile in (1 << 20, 4 * 300 * kernels.LANES):   # one tile, and one block of rows per tile
        old, kernels.TILE_BYTES = kernels.TILE_BYTES, tile
        try:
            y = kernels.numba_matmul(x, lay)
        finally:
            kernels.TILE_BYTES = old
        assert rel_err(y, x.double() @ kernels.dequantize(t, spec).double().T) < 1e-5


def test_the_table_kernel_in_several_chunks_of_row_groups_matches_too():
    t, spec = random_linear(35, 7 * 128 + 40)       # 8 row-groups, the last one 40 wide
    lay = kernels.cpu_layout(t, spec)
    for chunk in (3, 5, 100):                        # chunks of 2-3, of 4, and all 8 at once
        old, kernels.CHUNK_GROUPS = kernels.CHUNK_GROUPS, chunk
        try:
            x = torch.randn(2, 7 * 128 + 40, generator=torch.Generator().manual_seed(1))
            y = kernels.numba_matmul(x, lay)
        finally:
            kernels.CHUNK_GROUPS = old
        assert rel_err(y, x.double() @ kernels.dequantize(t, spec).double().T) < 1e-5, chunk


def has_avx512() -> bool:
    try:
        return " avx512f" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(not has_avx512(), reason="LLVM emits the 16-wide gathers on AVX-512 CPUs; on AVX2-only "
                    "ones (such as this project's CI machines) its cost model scalarizes them, which the results "
                    "tests cover")
def test_the_table_kernel_compiles_to_vector_gathers():
    census = bench.asm_census()
    assert census["_gemv"]["vgatherdps"] >= 2          # the sign-table lookups and the salient activations


def test_a_row_group_with_the_wrong_salient_count_is_refused_by_name():
    t, spec = random_linear(20, 300)
    t["trits"][13, 26] = 242                           # row 13, weights 130-134 (row-group 1) all salient now
    with pytest.raises(ValueError, match=r"row 13, row-group 1: .* exactly k = 26 salient"):
        kernels.cpu_layout(t, spec)


@pytest.mark.parametrize("high_bits", [4, 8])
def test_zero_points_on_the_grid_pass_the_encoding_check_and_one_past_it_does_not(high_bits):
    """8-bit codes (the pbllm preset): a uint8 zero point of 255 is on the grid, and 2**8 must not wrap to 0."""
    t, spec = random_linear(6, 256, "trits", high_bits)
    t["zero"][:] = 2 ** high_bits - 1
    kernels.check_encoding(t, spec)                      # on the grid: passes
    if high_bits < 8:
        t["zero"][2, 1] = 2 ** high_bits
        with pytest.raises(ValueError, match=r"zero row 2, row-group 1: zero point 16 is outside"):
            kernels.check_encoding(t, spec)


def test_numba_rejects_what_it_cannot_hold():
    t, spec = random_linear(4, 64, "trits", 8, group_size=512)
    with pytest.raises(ValueError, match="16-bit entries"):
        kernels.cpu_layout(t, spec)
    with pytest.raises(ValueError, match="features"):
        kernels.numba_matmul(torch.randn(2, 65), kernels.cpu_layout(*random_linear(4, 64)))


# -----------------------------------------------------------------------------
# QuantLinear

@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
def test_quantlinear_forward_equals_x_times_its_dequantized_weight(backend):
    t, spec = random_linear(24, 200, seed=3)
    q = llama.QuantLinear(spec, t, backend)
    assert all(b.dtype in (torch.uint8, torch.int16) for b in q.state_dict().values())   # packed bytes only
    assert torch.equal(q.dequantize(), kernels.dequantize(t, spec))
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    q.to(device)
    x = torch.randn(2, 5, 200)                                                 # (B, T, in)
    y = q(x.to(device)).cpu()
    assert y.shape == (2, 5, 24)
    assert rel_err(y, x.double() @ q.dequantize().cpu().double().T) < 1e-5
    yb = q(x.bfloat16().to(device))
    assert yb.dtype == torch.bfloat16


def test_model_dtype_changes_leave_the_packed_bytes_alone():
    t, spec = random_linear(8, 40)
    q = llama.QuantLinear(spec, t)
    W = q.dequantize()
    q.to(torch.bfloat16)
    assert torch.equal(q.dequantize(), W)


# -----------------------------------------------------------------------------
# packed models: loading, evaluation, generation

def write_packed(d, *flags):
    """A tiny GGUF, a text, and the tiny model quantized with `flags` to d / q.safetensors."""
    write_gguf(d / "tiny.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    (d / "text.txt").write_text("hello world, the quick brown fox jumps over the lazy dog. " * 100)
    rc = sq.main(["--ckpt", str(d / "tiny.gguf"), "--calib", "text", str(d / "text.txt"), "--nsamples", "8",
                  "--seqlen", "32", *flags, "--out", str(d / "q.safetensors")])
    assert rc == 0
    return d


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return write_packed(tmp_path_factory.mktemp("k"), "--preset", "paper")   # version 1


def test_quantizing_a_packed_file_again_is_refused_in_one_line(packed, capsys):
    assert sq.main(["--ckpt", str(packed / "q.safetensors"), "--out", str(packed / "again.safetensors")]) == 2
    assert "already a packed squeeze10 file" in capsys.readouterr().err
    assert not (packed / "again.safetensors").exists()


def test_a_packed_checkpoint_loads_as_quantlinears_without_dense_weights(packed):
    m = llama.load_checkpoint(packed / "q.safetensors")
    linears = [mod for mod in m.modules() if isinstance(mod, llama.QuantLinear)]
    assert len(linears) == 2 * 7
    assert not any(isinstance(mod, torch.nn.Linear) for layer in m.layers for mod in layer.modules())
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for n, p in m.named_parameters()
                                                         if not n.startswith("layers.") or "norm" in n)
    assert llama.num_params(m) == llama.num_params(llama.load_checkpoint(packed / "tiny.gguf"))  # weights it stands for


def test_a_packed_file_with_damaged_states_gives_one_line(packed, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(packed / "q.safetensors"), "pt") as f:
        tensors, metadata = {n: f.get_tensor(n) for n in f.keys()}, f.metadata()
    trits = tensors["layers.1.feed_forward.w2.trits"]
    trits[0, 0] = 242 if trits[0, 0] != 242 else 0     # five weights' states changed: the salient count is off
    meta = json.loads(metadata["squeeze10"])
    meta["checksums"] = kernels.checksums(tensors)          # as a faulty writer would record them: the checksums agree
    metadata["squeeze10"] = json.dumps(meta)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert ev.main(["--ckpt", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "layers.1.feed_forward.w2: row 0, row-group 0" in err and err.count("\n") == 1


def test_perplexity_through_the_kernels_equals_the_reference_path(packed, capsys):
    ppl = {}
    for backend in ("reference", "numba", "triton"):
        rc = ev.main(["--ckpt", str(packed / "q.safetensors"), "--text", str(packed / "text.txt"), "--seqlen", "32",
                      "--windows", "2", "--backend", backend, "--json",
                      "--device", TRITON_DEVICE if backend == "triton" else "cpu"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        ppl[backend] = json.loads(out.strip().splitlines()[-1])["ppl"]
    assert ppl["numba"] == pytest.approx(ppl["reference"], rel=1e-3)
    assert ppl["triton"] == pytest.approx(ppl["reference"], rel=1e-3)


def test_the_kv_cache_reproduces_the_full_forward_pass(packed):
    m = llama.load_checkpoint(packed / "tiny.gguf")
    tokens = torch.randint(0, 261, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = m(tokens)
        m.setup_cache(2, 12)
        assert m.decode_head is None                                 # the float32 head unless asked for
        m.setup_cache(2, 12, fp16_head=True)
        assert m.decode_head is not None and m.decode_head.dtype == torch.float16   # one-token steps' head
        half = m.decode_head
        m.decode_head = None                                         # first the cache alone: exact
        steps = [m(tokens[:, :7])] + [m(tokens[:, i:i + 1], start=i) for i in range(7, 10)]
        steps.append(m(tokens[:, 10:], start=10))                    # two new positions at once
        m.setup_cache(2, 12, fp16_head=True)
        m(tokens[:, :7])
        one = m(tokens[:, 7:8], start=7)                             # then a step through the fp16 head
        m.setup_cache(None, 0)
    assert m.decode_head is None and half.equal(m.output.weight.half())
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert torch.allclose(one, full[:, 7:8], atol=2e-2, rtol=1e-2) and one.argmax(-1).equal(full[:, 7:8].argmax(-1))


def test_generation_from_a_packed_model_is_deterministic(packed):
    m = llama.load_checkpoint(packed / "q.safetensors")
    tok = ev.data.load_tokenizer(llama.tokenizer_source(packed / "q.safetensors"))
    runs = [ev.generate(m, tok, "hello world", 12) for _ in range(2)]
    assert runs[0]["ids"] == runs[1]["ids"] and len(runs[0]["ids"]) >= 1
    # greedy decoding picks the argmax of the full forward pass at every step
    ids = tok.encode("hello world", bos=False) + runs[0]["ids"]
    with torch.inference_mode():
        logits = m(torch.tensor([ids]))[0]
    n = len(runs[0]["ids"])
    assert logits[-n - 1:-1].argmax(-1).tolist() == runs[0]["ids"]
    sampled = [ev.generate(m, tok, "hello world", 12, temperature=1.0, seed=7)["ids"] for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_generate_cli_prints_text_and_speed(packed, capsys):
    rc = ev.main(["--ckpt", str(packed / "q.safetensors"), "--generate", "hello", "--max-new-tokens", "5", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["new_tokens"] == len(report["ids"]) <= 5 and "tokens/s" in err or report["new_tokens"] == 1


@pytest.mark.parametrize("argv,message", [
    pytest.param(["--backend", "numba", "--device", "cuda"], "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
    (["--backend", "fast"], "invalid choice"),
    (["--generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_backend_or_generation_flags_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


# -----------------------------------------------------------------------------
# the benchmark's plumbing (its numbers are measured by hand: README)

@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the bench times the Triton rows")
def test_bench_json_has_the_documented_rows():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--json", "--shapes", "48x256",
                          "--reps", "2", "--decode", ""], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    layouts = ("v1", "v1-plain", *bench.v2_rows())                 # v2: every instruction set the CPU has
    assert [(r["shape"], r["batch"], r["layout"]) for r in rows] == [("48x256", b, v) for b in bench.BENCH_BATCHES
                                                                     for v in layouts]
    assert result["copy_gbps"] > 0 and result["decode"] == {}
    for r in rows:
        assert r["backend"] == "numba"
        rounding = 5e-5 / r["dense_ms"] + 5e-5 / r["kernel_ms"]       # the times are rounded to 4 decimals
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["kernel_ms"], rel=0.01 + rounding, abs=1e-3)
        assert r["gbps"] == pytest.approx(r["bytes"] / r["kernel_ms"] / 1e6, rel=0.01 + rounding, abs=0.01)
        assert set(r) == {"backend", "layout", "shape", "batch", "dense_ms", "bf16_ms", "kernel_ms", "speedup",
                          "bytes", "gbps"}


def test_random_cpu_layout_has_cpu_layouts_shapes():
    t, spec = random_linear(40, 200)
    real, fake = kernels.cpu_layout(t, spec), bench.random_cpu_layout(40, 200)
    for key in ("signs", "sal", "const", "groups"):
        assert real[key].shape == fake[key].shape and real[key].dtype == fake[key].dtype, key
    assert np.array_equal(real["groups"], fake["groups"])


def test_the_bench_rotates_copies_of_one_columns_layout():
    lays = bench.random_columns_layout(70, 300, copies=3)
    y = [kernels.columns_matmul(torch.ones(1, 300), lay) for lay in lays]
    assert all(torch.equal(v, y[0]) for v in y) and not np.shares_memory(lays[0].data, lays[1].data)
