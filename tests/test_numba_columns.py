"""The numba kernels for version 2 against a float64 dense product; the version-1 IR loops against their
plain-numba twins (the same bits); numba imported only when the numba backend runs.

The version-2 linears are the Triton tests' records, written by squeeze10's own packer (test_triton_columns).
"""
import json
import subprocess
import sys
from pathlib import Path

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
BATCHES = (1, 3, kernels.COLUMNS_TABLE_BATCH, kernels.COLUMNS_TABLE_BATCH + 1, 17)   # tables, then tiles


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c[0]}x{c[1]}-G{c[2]}-R{c[3]}-hb{c[5]}-{c[6]}" for c in CONFIGS])
def test_columns_numba_matches_float64(config):
    tensors, spec = random_columns_linear(*config)
    lay = kernels.columns_cpu_layout(tensors, spec)
    W = kernels.dequantize(tensors, spec).double()
    for M in BATCHES:
        x = torch.randn(M, spec["shape"][1], generator=torch.Generator().manual_seed(M))
        y = kernels.columns_matmul(x, lay)
        assert y.shape == (M, spec["shape"][0]) and y.dtype == torch.float32
        assert rel_err(y, x.double() @ W.T) < 1e-5, M


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
