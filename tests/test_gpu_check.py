"""tools/gpu_check.py on a machine without CUDA: it runs what it can (the Triton kernels interpreted, against
float64), names what it skipped, fails when a kernel is wrong, and its GPU-only plumbing (pytest's counts,
synthetic.py's report, the timings' table) works on stand-ins for what only a GPU gives.
"""
import json
import subprocess
import sys

import pytest
import torch

import kernels
import model
from conftest import ROOT, TINY, write_gguf
from tools import gpu_check

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU machine's behaviour")
SMALL = [gpu_check.INTERPRET_SHAPE]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@no_cuda
def test_the_command_runs_the_interpreted_kernels_and_names_each_skipped_part():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--budget", "60", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for skipped in ("skipped: the kernel test files on the GPU: no CUDA device",
                    "skipped: the kernels at LLaMA-2-7B's shapes, their times, cuBLAS: no CUDA device",
                    "skipped: the synthetic LLaMA-2-7B quantization: no CUDA device"):
        assert skipped in res.stdout
    report = last_json(res.stdout)
    assert report["passed"] and report["machine"]["cuda"] is False and report["seconds"] < 60
    sections = report["sections"]
    assert sections["tests"]["status"] == sections["synthetic"]["status"] == "skipped"
    assert sections["kernels"]["status"] == "passed"
    rows = sections["kernels"]["rows"]
    assert [(r["shape"], r["batch"]) for r in rows] == [("48x256", 1), ("48x256", 16)]
    for r in rows:   # fp32 x: only the sums' rounding is left against float64; fp16 x: the fp16 output's
        assert set(r["rel_err"]) == {"v1 fp32", "v1 fp16", "v2 fp32", "v2 fp16"}
        assert max(r["rel_err"][k] for k in ("v1 fp32", "v2 fp32")) < 1e-6
        assert 1e-5 < max(r["rel_err"][k] for k in ("v1 fp16", "v2 fp16")) < 1e-3


def test_a_kernel_off_by_one_percent_fails_the_check(monkeypatch, capsys):
    right = kernels.triton_matmul_columns
    monkeypatch.setattr(kernels, "triton_matmul_columns", lambda *args, **kw: 1.01 * right(*args, **kw))
    monkeypatch.setattr(gpu_check, "SHAPES", SMALL)
    assert gpu_check.main(["--only", "kernels", "--json"]) == 1
    out = capsys.readouterr().out
    kernels_report = last_json(out)["sections"]["kernels"]
    assert kernels_report["status"] == "failed" and not last_json(out)["passed"]
    failures = kernels_report["failures"]
    assert len(failures) == 4 and all(f.startswith("v2 ") for f in failures)     # v2, fp32 and fp16, 2 batches
    assert "v2 fp32 at 48x256, batch 1: relative error 0.01 against float64" in out
    assert "FAILED: kernels;" in out


def test_one_part_in_ten_thousand_is_caught_with_fp32_activations(monkeypatch, capsys):
    right = kernels.triton_matmul
    monkeypatch.setattr(kernels, "triton_matmul", lambda *args, **kw: (1 + 3e-4) * right(*args, **kw))
    monkeypatch.setattr(gpu_check, "SHAPES", SMALL)
    assert gpu_check.main(["--only", "kernels"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if "FAILED: v" in line]
    assert len(failures) == 2 and all("v1 fp32" in f for f in failures)          # fp16's own rounding is larger


@no_cuda
def test_the_cuda_path_builds_its_table_with_a_stand_in_for_graphs(monkeypatch, capsys):
    def fake_graph_ms(calls, reps):
        calls[0]()
        calls[-1]()
        return 0.5, ""
    monkeypatch.setattr(gpu_check, "CUDA", True)
    monkeypatch.setattr(gpu_check, "SHAPES", SMALL)
    monkeypatch.setattr(gpu_check, "graph_ms", fake_graph_ms)
    sec = gpu_check.Section("kernels")
    gpu_check.kernels_section(sec, timeout=60, reps=1)
    assert sec.status == "passed", sec.failures
    for r in sec.data["rows"]:
        assert r["fp16_ms"] == r["bf16_ms"] == r["v1_ms"] == r["v2_ms"] == 0.5 and r["graphs"]
        assert r["speedup_vs_fp16"] == {"v1": 1.0, "v2": 1.0} and r["v2_bytes"] > 0
        assert 0 < r["rel_err"]["dense fp16"] < r["rel_err"]["dense bf16"] < 1e-2
    assert "0.5000" in capsys.readouterr().out


def test_the_synthetic_section_reads_synthetic_py_json_and_stops_it_in_time(monkeypatch):
    seen = []
    report = dict(name="llama2-7b", blocks=2, model_blocks=32, calibration=dict(nsamples=32, seqlen=2048, seed=0),
                  quantize_seconds=80.0, seconds_per_block=40.0, extrapolated_seconds=1280.0, peak_rss_mb=6000,
                  peak_cuda_mb=9216)

    def fake_run_child(cmd, timeout, env=None):
        seen.append(cmd)
        return 0, "log\n" + json.dumps(report) + "\n", "", 85.0
    monkeypatch.setattr(gpu_check, "CUDA", True)
    monkeypatch.setattr(gpu_check, "run_child", fake_run_child)
    sec = gpu_check.Section("synthetic")
    gpu_check.synthetic_section(sec, 200, blocks=2, nsamples=32, extra=["--offload"])
    assert seen[0][1:] == ["tools/synthetic.py", "llama2-7b", "--blocks", "2", "--device", "cuda", "--nsamples",
                           "32", "--json", "--offload"]
    assert sec.status == "passed" and sec.data["report"] == report
    assert sec.summary == ("40.0 s a block, 21.3 min projected for 32 blocks; peak CUDA 9.00 GiB, "
                           "peak RSS 5.86 GiB")

    monkeypatch.setattr(gpu_check, "run_child", lambda cmd, timeout, env=None: (None, "", "block 0: w1\n", 200.0))
    sec = gpu_check.Section("synthetic")
    gpu_check.synthetic_section(sec, 200, blocks=2, nsamples=32, extra=[])
    assert sec.status == "failed" and "ran past 200 s and was stopped (last log: block 0: w1)" in sec.failures[0]


def test_the_tests_section_runs_pytest_in_a_child_and_counts():
    sec = gpu_check.Section("tests")
    gpu_check.run_tests(sec, 60, files=["tests/test_kernels.py"],
                        extra=["-k", "test_the_dequantization_arithmetic_by_hand"])
    assert sec.status == "passed", sec.failures
    assert sec.data["counts"]["passed"] == 1 and sec.data["counts"]["deselected"] > 10
    assert gpu_check.pytest_counts("x\n=== 2 failed, 10 passed, 1 error in 3.2s ===\n") == dict(failed=2, passed=10,
                                                                                              error=1)


def test_a_child_past_its_time_is_killed():
    rc, out, err, seconds = gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert rc is None and seconds < 10


def test_no_time_left_skips_each_section_by_name(capsys):
    assert gpu_check.main(["--budget", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("no time left in --budget") >= 3
    assert {s["status"] for s in last_json(out)["sections"].values()} == {"skipped"}


@pytest.mark.parametrize("argv,message", [
    (["--budget", "0"], "--budget 0.0: must be more than 0"),
    (["--only", "kernels,gpu"], "--only kernels,gpu: choose from tests, kernels, synthetic"),
    (["--reps", "0"], "--reps 0: must be at least 1"),
    (["--synthetic-args", "'--offload"], "--synthetic-args / --pytest-args"),
])
def test_bad_flags_give_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_test_that_needs_gguf_is_skipped_only_under_the_gpu_check(tmp_path, monkeypatch):
    """A bare GPU image has no gguf: under SQUEEZE10_GPU_CHECK=1 (which run_tests sets) the GGUF fixture skips
    and pytest counts it; anywhere else a missing gguf is an error, never a silent skip."""
    monkeypatch.setitem(sys.modules, "gguf", None)                # `import gguf` now raises ImportError
    args = model.ModelArgs(**TINY)
    monkeypatch.setenv("SQUEEZE10_GPU_CHECK", "1")
    with pytest.raises(pytest.skip.Exception, match="gguf is not installed"):
        write_gguf(tmp_path / "tiny.gguf", args)
    monkeypatch.setenv("SQUEEZE10_GPU_CHECK", "")
    with pytest.raises(ImportError):
        write_gguf(tmp_path / "tiny.gguf", args)
    assert not (tmp_path / "tiny.gguf").exists()
