"""The numba kernels for version 2 against a float64 dense product, every instruction set's lookups against their
plain-numba twins (the same bits, on AVX-512, forced AVX2 and plain-only targets), fused linears against
separate ones; the version-1 IR loops against their twins; numba imported only when the numba backend runs.

The version-2 linears are the Triton tests' records, written by squeeze10's own packer (test_triton_columns).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as ev
import kernels
import model as llama
from conftest import TRITON_DEVICE
from test_kernels import write_packed
from test_triton_columns import CONFIGS, random_columns_linear, rel_err
from tools import bench

ROOT = Path(__file__).resolve().parents[1]
# the tables (6: on AVX-512 a call for 4 rows of x, then 2 alone), then the decoded tiles
BATCHES = (1, 3, 6, kernels.COLUMNS_TABLE_BATCH, kernels.COLUMNS_TABLE_BATCH + 1)
IDS = [f"{c[0]}x{c[1]}-G{c[2]}-R{c[3]}-hb{c[5]}-{c[6]}" for c in CONFIGS]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_columns_numba_matches_float64_and_every_isa_gives_the_plain_twins_bits(config):
    tensors, spec = random_columns_linear(*config)
    lay = kernels.columns_cpu_layout(tensors, spec)
    W = kernels.dequantize(tensors, spec).double()
    for M in BATCHES:
        x = torch.randn(M, spec["shape"][1], generator=torch.Generator().manual_seed(M))
        plain = kernels.columns_matmul(x, lay, isa="plain")
        assert plain.shape == (M, spec["shape"][0]) and plain.dtype == torch.float32
        assert rel_err(plain, x.double() @ W.T) < 1e-5, M
        for isa in kernels.cpu_isas():                            # AVX2 and AVX-512 where the CPU has them
            assert torch.equal(kernels.columns_matmul(x, lay, isa=isa), plain), (isa, M)


def test_the_layout_reads_fewer_bytes_than_before_with_bf16_constants_where_exact():
    """The default preset's shape (fp8 parameters: exact in bf16) at 2.4 bits a weight; fp16 parameters are not
    all exact in bf16, so their constants stay fp32."""
    fp8 = kernels.columns_cpu_layout(*bench.random_columns_bytes(64, 1024))
    assert fp8.wide.tolist() == [0] and 8 * fp8.nbytes() / (64 * 1024) < 2.5
    tensors, spec = random_columns_linear(*CONFIGS[0])                       # fp16 parameters
    assert kernels.columns_cpu_layout(tensors, spec).wide.tolist() == [1]


def test_fused_linears_give_what_each_gives_alone():
    """wq|wk|wv as one layout: one call, the same bits as three; each linear's part is a view of the joined
    bytes; batches through the tables and through the tiles."""
    shapes = [(70, 300), (33, 300), (40, 300)]
    linears = [random_columns_linear(out, n_in, 24, 32, 61, 3, "fp8", True, seed=i) for i, (out, n_in) in
               enumerate(shapes)]
    alone = [kernels.columns_cpu_layout(t, spec) for t, spec in linears]
    fused = kernels.fuse_columns(alone)
    for M in (1, 5, kernels.COLUMNS_TABLE_BATCH + 1):
        x = torch.randn(M, 300, generator=torch.Generator().manual_seed(M))
        together = kernels.columns_matmul_parts(x, fused)
        for i, (lay, y) in enumerate(zip(alone, together)):
            assert torch.equal(y, kernels.columns_matmul(x, lay))
            part = kernels.fused_part(fused, i)
            assert np.shares_memory(part.data, fused.data) and torch.equal(kernels.columns_matmul(x, part), y)
    with pytest.raises(ValueError, match="fused linears must"):
        kernels.fuse_columns([alone[0], kernels.columns_cpu_layout(*random_columns_linear(*CONFIGS[2]))])


CHILD = """
import sys, torch, kernels
from test_triton_columns import CONFIGS, random_columns_linear, rel_err
tensors, spec = random_columns_linear(*CONFIGS[1])
lay = kernels.columns_cpu_layout(tensors, spec)
x = torch.randn(3, spec["shape"][1])
y = kernels.columns_matmul(x, lay)
y = kernels.columns_matmul(x, lay)
same = all(torch.equal(kernels.columns_matmul(x, lay, isa=isa), y) for isa in kernels.cpu_isas())
W = kernels.dequantize(tensors, spec).double()
print(kernels.cpu_isas(), kernels.nibble_isa(), same, rel_err(y, x.double() @ W.T) < 1e-5)
"""
HASWELL = "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+popcnt,+sse,+sse2,+sse3," \
          "+sse4.1,+sse4.2,+ssse3,+xsave"


@pytest.mark.parametrize("cpu,features,isas", [("haswell", HASWELL, "('plain', 'avx2') avx2"),
                                               ("x86-64", "+64bit,+sse,+sse2", "('plain',) plain")])
def test_an_avx2_only_and_a_plain_only_cpu_compile_and_agree(cpu, features, isas):
    """numba compiling for an AVX2-only CPU (no AVX-512: the byte-shuffle loop, the AVX-512 one a stub) and for
    a bare x86-64 (both stubs, the plain twins, one notice on stderr for two calls): right, and the same bits."""
    if "x86" not in os.uname().machine:
        pytest.skip("x86 targets")
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    res = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[0] == isas + " True True"
    notices = [line for line in res.stderr.splitlines() if line.startswith("kernels.py: this CPU has no AVX2")]
    assert len(notices) == (1 if cpu == "x86-64" else 0)


def test_columns_numba_passes_small_tables_and_leading_dimensions(monkeypatch):
    """Several passes over the row-groups (tables that do not fit TABLE_BYTES at once), x of shape (2, 1, in)
    in bfloat16: the same product."""
    tensors, spec = random_columns_linear(*CONFIGS[1])
    lay = kernels.columns_cpu_layout(tensors, spec)
    x = torch.randn(2, 1, spec["shape"][1])
    whole = kernels.columns_matmul(x, lay)
    monkeypatch.setattr(kernels, "TABLE_BYTES", 1)             # one row-group per pass
    assert torch.allclose(kernels.columns_matmul(x, lay), whole, rtol=1e-5, atol=1e-6)
    y = kernels.columns_matmul(x.bfloat16(), lay)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 1, spec["shape"][0])


def test_columns_numba_names_what_it_cannot_take():
    tensors, spec = random_columns_linear(*CONFIGS[0])
    lay = kernels.columns_cpu_layout(tensors, spec)
    with pytest.raises(ValueError, match="x has 299 features, the weight takes 300"):
        kernels.columns_matmul(torch.randn(1, 299), lay)
    tensors["columns"][0, 0] ^= 1
    with pytest.raises(ValueError, match="row-block 0 marks"):
        kernels.columns_cpu_layout(tensors, spec)


@pytest.mark.parametrize("shape", [(40, 200), (67, 300)])
def test_the_ir_loops_and_their_plain_twins_give_the_same_bits(shape):
    lay = bench.random_cpu_layout(*shape)
    for M in (1, 3, 16):                                       # the table kernel, then the decoded tiles
        x = torch.randn(M, shape[1], generator=torch.Generator().manual_seed(M))
        assert torch.equal(kernels.numba_matmul(x, lay, ir=True), kernels.numba_matmul(x, lay, ir=False))


def test_model_and_squeeze10_do_not_import_numba():
    code = "import sys, model, squeeze10, eval; print('numba' in sys.modules, 'llvmlite' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture(scope="module")
def packed_v2(tmp_path_factory):
    return write_packed(tmp_path_factory.mktemp("v2"), "--block-rows", "4")   # the default preset: version 2


def test_perplexity_of_a_version_2_file_through_every_backend(packed_v2, capsys):
    ppl = {}
    for backend in ("reference", "numba", "triton"):
        rc = ev.main(["--ckpt", str(packed_v2 / "q.safetensors"), "--text", str(packed_v2 / "text.txt"),
                      "--seqlen", "32", "--windows", "2", "--backend", backend, "--json",
                      "--device", TRITON_DEVICE if backend == "triton" else "cpu"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        ppl[backend] = json.loads(out.strip().splitlines()[-1])["ppl"]
    assert ppl["numba"] == pytest.approx(ppl["reference"], rel=1e-4)
    assert ppl["triton"] == pytest.approx(ppl["reference"], rel=1e-4)


@torch.inference_mode()
def greedy(m, prompt: list, steps: int) -> list:
    m.setup_cache(1, len(prompt) + steps)
    logits = m(torch.tensor([prompt]))[0, -1]
    ids = []
    for pos in range(len(prompt), len(prompt) + steps):
        ids.append(int(logits.argmax()))
        logits = m(torch.tensor([[ids[-1]]]), start=pos)[0, -1]
    m.setup_cache(None, 0)
    return ids


def test_greedy_decoding_of_a_version_2_file_is_the_same_on_every_backend(packed_v2):
    m = llama.load_checkpoint(packed_v2 / "q.safetensors")
    ids = {}
    for backend in ("reference", "numba"):                     # one token per step: the table kernel
        llama.set_backend(m, backend)
        ids[backend] = greedy(m, [5, 17, 99, 3], 12)
    assert ids["numba"] == ids["reference"]


def test_the_decode_path_of_a_version_2_file_gives_the_reference_paths_logits(packed_v2):
    """model.Decoder with the table kernel bound once per linear group (kernels.DecodeProduct) against forward()
    on the reference backend (dequantize, then torch.matmul), step by step."""
    m = llama.load_checkpoint(packed_v2 / "q.safetensors")
    prompt, follow = [5, 17, 99, 3], [8, 41, 2, 77, 13, 0, 64]
    logits = {}
    for backend, decode_path in (("numba", True), ("reference", False)):
        llama.set_backend(m, backend)
        with torch.inference_mode():
            m.setup_cache(1, len(prompt) + len(follow), decode_path=decode_path)
            if decode_path:
                assert all(isinstance(p, kernels.DecodeProduct) for p in (m.decoder.blocks[0].qkv, m.decoder.blocks[0].w2))
            steps = [m(torch.tensor([prompt]))[0, -1]]
            steps += [m(torch.tensor([[t]]), start=len(prompt) + i)[0, -1] for i, t in enumerate(follow)]
            m.setup_cache(None, 0)
        logits[backend] = torch.stack(steps)
    assert torch.allclose(logits["numba"], logits["reference"], rtol=1e-4, atol=1e-4)


def test_a_packed_model_runs_wq_wk_wv_as_one_call_with_the_same_bits(packed_v2):
    m = llama.load_checkpoint(packed_v2 / "q.safetensors")
    att = m.layers[0].attention
    x = torch.randn(1, 1, att.wq.in_features)
    separate = [att.wq(x), att.wk(x), att.wv(x)]
    together = llama.shared_input(x, att.wq, att.wk, att.wv)           # the first call joins the layouts
    assert all(torch.equal(a, b) for a, b in zip(separate, together))
    fused = att.wq._fused[1]
    assert all(np.shares_memory(lin._cpu.data, fused.data) for lin in (att.wq, att.wk, att.wv))
    assert all(torch.equal(lin(x), y) for lin, y in zip((att.wq, att.wk, att.wv), separate))   # the views still work
    llama.set_backend(m, "reference")                                  # the plain twin: one call per linear
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(llama.shared_input(x, att.wq, att.wk, att.wv), separate))
