"""Reliability (issue 11): whatever the input, signal or disk does, one line, a non-zero exit, no lost file.

Each test makes its own tiny input. References are independent of the code under test: checksums are
recomputed from the file's byte ranges as safetensors' header gives them; signals are real signals sent to a
real process.
"""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import eval as ev
import kernels
import model as llama
import squeeze10 as sq
from tools import cli
from conftest import ROOT, TINY, random_state, write_gguf, write_hf, write_meta

VOCAB = 261  # the tiny GGUF's byte-level vocabulary


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A tiny GGUF, a calibration text, and one packed file quantized from them."""
    d = tmp_path_factory.mktemp("rel")
    write_gguf(d / "tiny.gguf", llama.ModelArgs(**{**TINY, "vocab_size": VOCAB}))
    (d / "calib.txt").write_text("hello world, the quick brown fox. " * 200)
    assert sq.main([str(a) for a in quantize_args(d, d / "q.safetensors")]) == 0
    return d


def quantize_args(d, out, *extra):
    return ["--ckpt", d / "tiny.gguf", "--calib", "text", d / "calib.txt", "--nsamples", 4, "--seqlen", 32,
            "--preset", "paper", "--out", out, *extra]   # version 1: its trits and zero points are damaged below


def one_line_error(err: str) -> str:
    """The last stderr line, after checking it is an error line and that no traceback came before it."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def run_sq(capsys, *argv):
    rc = sq.main([str(a) for a in argv])
    return rc, *capsys.readouterr()


def run_ev(capsys, *argv):
    rc = ev.main([str(a) for a in argv])
    return rc, *capsys.readouterr()


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hf_model(path, edit=None, config=None, vocab=VOCAB):
    """A tiny HF checkpoint; `edit(state)` changes its weights, `config` overrides config.json fields."""
    args = llama.ModelArgs(**{**TINY, "vocab_size": vocab})
    state = random_state(args)
    if edit:
        edit(state)
    write_hf(path, state, args)
    if config:
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, **config}))
    return path


# -----------------------------------------------------------------------------
# 1. the output path

def test_out_must_be_a_regular_file_not_a_device_fifo_or_a_link_to_one(capsys, d, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to(fifo)
    (tmp_path / "to-null").symlink_to("/dev/null")
    for out, kind in ((fifo, "is a FIFO"), (tmp_path / "to-fifo", "is a FIFO (through the symlink"),
                      ("/dev/null", "is a character device"), (tmp_path / "to-null", "is a character device")):
        t0 = time.time()
        rc, out_, err = run_sq(capsys, *quantize_args(d, out))
        assert rc == 2 and kind in one_line_error(err) and err.count("\n") == 1, err
        assert time.time() - t0 < 5                                     # refused before loading anything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "to-fifo", "to-null"]
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_out_must_not_be_an_input(capsys, d, tmp_path):
    before = sha(d / "tiny.gguf")
    os.link(d / "tiny.gguf", tmp_path / "hardlink.gguf")                   # the same inode, another name
    (tmp_path / "link.gguf").symlink_to(d / "tiny.gguf")
    dotted = d / ".." / d.name / "tiny.gguf"                                # the same path once resolved
    for out in (d / "tiny.gguf", dotted, tmp_path / "hardlink.gguf", tmp_path / "link.gguf", d / "calib.txt"):
        rc, _, err = run_sq(capsys, *quantize_args(d, out))
        assert rc == 2 and "is the input" in one_line_error(err) and err.count("\n") == 1, (out, err)
    assert sha(d / "tiny.gguf") == before and (d / "calib.txt").read_text().startswith("hello world")


def test_a_symlink_to_a_regular_file_writes_its_target(capsys, d, tmp_path):
    (tmp_path / "target.safetensors").write_bytes(b"old")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "target.safetensors")
    rc, _, err = run_sq(capsys, *quantize_args(d, tmp_path / "link.safetensors"))
    assert rc == 0, err
    assert (tmp_path / "link.safetensors").is_symlink()
    assert sha(tmp_path / "target.safetensors") == sha(d / "q.safetensors")   # the same bytes as any run


SLOW_WRITE = """
import sys, time
sys.path.insert(0, {root!r})
import squeeze10 as sq
from tools import cli
real = cli.save_safetensors
def slow(tensors, path, metadata):   # the file is written, not yet renamed, when the signal comes
    real(tensors, path, metadata)
    (path.parent / ".tmpK3x9Qa").write_bytes(b"x" * 1000)   # as safetensors' own temporary file would be
    print("WRITING", path, flush=True)
    time.sleep(120)
cli.save_safetensors = slow
sys.exit(cli.run_main(sq.main, sys.argv[1:]))
"""


def start_slow_write(tmp_path, argv):
    script = tmp_path / "slow_write.py"
    script.write_text(SLOW_WRITE.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("WRITING"), proc.communicate()
    return proc, line.split()[1]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_give_one_line_and_remove_the_partial_file(d, tmp_path, sig, code):
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"an older result")
    proc, partial = start_slow_write(tmp_path, quantize_args(d, out))
    assert os.path.exists(partial) and out.name in os.path.basename(partial)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert one_line_error(err).startswith(f"error: interrupted by {signal.Signals(sig).name}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors", "slow_write.py"]
    assert out.read_bytes() == b"an older result"


def test_sigkill_leaves_a_named_partial_that_the_next_run_removes(capsys, d, tmp_path):
    out = tmp_path / "q.safetensors"
    proc, partial = start_slow_write(tmp_path, quantize_args(d, out))
    proc.kill()
    proc.wait()
    partial_dir = os.path.dirname(partial)      # everything the writer left, its own temporary files too
    assert os.path.basename(partial_dir) == f".q.safetensors.{proc.pid}.partial"
    assert sorted(os.listdir(partial_dir)) == [".tmpK3x9Qa", "q.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.path.basename(partial_dir), "slow_write.py"]
    rc, _, err = run_sq(capsys, *quantize_args(d, out))
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors", "slow_write.py"]


def test_a_full_disk_gives_one_line_and_keeps_the_old_file(d, tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes the kernel refuse safetensors' writes past
    4 KiB, as a full disk would (EFBIG instead of ENOSPC); safetensors raises its own SafetensorError."""
    import resource
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"an older result")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                 # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    res = subprocess.run([sys.executable, str(ROOT / "squeeze10.py"), *map(str, quantize_args(d, out))],
                         capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode == 2
    assert one_line_error(res.stderr) == f"error: {out}: cannot write: Error while serializing: I/O error: " \
                                         "File too large (os error 27)"
    assert out.read_bytes() == b"an older result" and [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]


@pytest.mark.parametrize("error", [SafetensorError("Error while serializing: No space left on device"),
                                   OSError(28, "No space left on device")])
def test_any_write_error_is_one_line_naming_the_path(capsys, d, tmp_path, monkeypatch, error):
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"old")

    def failing(tensors, path, metadata):
        open(path, "wb").write(b"half")
        raise error
    monkeypatch.setattr(cli, "save_safetensors", failing)
    rc, _, err = run_sq(capsys, *quantize_args(d, out))
    assert rc == 2 and one_line_error(err).startswith(f"error: {out}: cannot write: ")
    assert "No space left on device" in err
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]


# -----------------------------------------------------------------------------
# 2. non-finite numbers

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_nan_or_inf_weight_is_refused_at_load_naming_the_tensor(capsys, tmp_path, value):
    def poison(state):
        state["layers.1.feed_forward.w2.weight"][3, 5] = value
    hf = hf_model(tmp_path / "hf", poison)
    rc, out, err = run_ev(capsys, "--ckpt", hf)
    line = one_line_error(err)
    assert rc == 2 and err.count("\n") == 1 and out == ""
    assert "layers.1.feed_forward.w2.weight holds 1 non-finite values" in line and "at [3, 5]" in line
    # the quantizer refuses it too, before any block is quantized, and writes nothing
    rc, _, err = run_sq(capsys, "--ckpt", hf, "--tokenizer", tmp_path / "hf", "--out", tmp_path / "q.safetensors")
    assert rc == 2 and "non-finite" in one_line_error(err) and "block 1" not in err
    assert not (tmp_path / "q.safetensors").exists()


def test_a_weight_beyond_float16_is_refused_when_loaded_as_float16(capsys, tmp_path):
    def big(state):
        state["norm.weight"][0] = 1e6
    hf = hf_model(tmp_path / "hf", big)
    rc, _, err = run_ev(capsys, "--ckpt", hf, "--dtype", "float16")
    assert rc == 2 and "norm.weight holds 1 non-finite values in torch.float16" in one_line_error(err)


def test_a_nan_perplexity_is_an_error_not_a_result(capsys, d, tmp_path):
    def overflow(state):      # finite weights whose products overflow float32: the residual becomes Inf, then NaN
        state["layers.0.feed_forward.w2.weight"].fill_(3e38)
    hf = hf_model(tmp_path / "hf", overflow)
    rc, out, err = run_ev(capsys, "--ckpt", hf, "--tokenizer", d / "tiny.gguf", "--text", d / "calib.txt",
                          "--seqlen", 32, "--windows", 2)
    line = one_line_error(err)
    assert rc == 2 and "window 1: the negative log-likelihood is nan" in line and str(hf) in line
    assert "perplexity" not in out
    with torch.inference_mode():
        assert not torch.isfinite(llama.load_checkpoint(hf)(torch.zeros(1, 4, dtype=torch.long))).all()


@pytest.mark.parametrize("key, value", [("rope_theta", -1.0), ("rope_theta", float("nan")), ("rms_norm_eps", 0),
                                        ("rms_norm_eps", "1e-5"), ("rope_theta", float("inf"))])
def test_rope_theta_and_norm_eps_must_be_finite_and_positive(capsys, tmp_path, key, value):
    hf = hf_model(tmp_path / "hf", config={key: value})               # json writes NaN / Infinity literally
    rc, _, err = run_ev(capsys, "--ckpt", hf)
    ours = {"rope_theta": "rope_theta", "rms_norm_eps": "norm_eps"}[key]
    assert rc == 2 and f"{ours} = {value!r} in the config is not a finite number > 0" in one_line_error(err)


def test_safe_cholesky_retries_a_singular_hessian_with_more_damping():
    H = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)     # singular: L22² = 1 − 1 = 0
    assert torch.linalg.cholesky_ex(H).info > 0
    sq.DAMPING_RETRIES.clear()
    L = sq.safe_cholesky(H)
    extra = 10 * sq.DAMP * 1.0                                          # the first retry: 10× DAMP · mean(diag H)
    ref = np.linalg.cholesky(H.numpy() + extra * np.eye(2))
    assert np.allclose(L.numpy(), ref, atol=1e-12)
    assert sq.DAMPING_RETRIES == [dict(size=2, factor=10, added=extra)]
    with pytest.raises(sq.QuantizationError, match="NaN or Inf"):
        sq.safe_cholesky(torch.full((2, 2), float("nan")))
    with pytest.raises(sq.QuantizationError, match="not positive definite, even with 1000x"):
        sq.safe_cholesky(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))        # mean(diag H) = 0: no damping helps


def test_a_degenerate_hessian_is_retried_and_the_report_says_so(capsys, d, tmp_path, monkeypatch):
    real = sq.Stats.hessian

    def indefinite(self):       # 0.05 · mean(diag H) below H: GPTQ's damping (0.01) cannot make it definite
        H = real(self)
        return H - 0.05 * H.diag().mean() * torch.eye(H.shape[0])
    monkeypatch.setattr(sq.Stats, "hessian", indefinite)
    rc, out, err = run_sq(capsys, *quantize_args(d, tmp_path / "q.safetensors"), "--json")
    assert rc == 0, err
    retries = json.loads(out.strip().splitlines()[-1])["damping_retries"]
    assert retries and {r["layer"] for r in retries} == {"layers.0", "layers.1"}
    assert {r["factor"] for r in retries} == {10}
    assert {r["linears"] for r in retries} >= {"attention.wq + attention.wk + attention.wv", "feed_forward.w2"}
    assert "damping: layers.0" in out and "needed 10x the damping" in err
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["squeeze10"])["damping_retries"] == retries
    m = llama.load_checkpoint(tmp_path / "q.safetensors")
    with torch.inference_mode():
        assert torch.isfinite(m(torch.arange(8)[None])).all()


def test_a_hessian_beyond_rescue_names_the_layer(capsys, d, tmp_path, monkeypatch):
    real, calls = sq.Stats.hessian, []

    def nan_in_block_2(self):
        calls.append(1)
        H = real(self)
        return H * float("nan") if len(calls) > len(sq.STEPS) else H      # the first step of the second block
    monkeypatch.setattr(sq.Stats, "hessian", nan_in_block_2)
    rc, _, err = run_sq(capsys, *quantize_args(d, tmp_path / "q.safetensors"))
    assert rc == 2 and one_line_error(err).startswith(
        "error: layers.1 (block 2): attention.wq + attention.wk + attention.wv: the calibration statistics hold NaN")
    assert not any(tmp_path.iterdir())


# -----------------------------------------------------------------------------
# 3. packed-file integrity

def header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8:8 + n])


def test_checksums_are_sha256_of_each_tensors_bytes_in_the_file(d):
    raw, n, head = header(d / "q.safetensors")
    sums = json.loads(head["__metadata__"]["squeeze10"])["checksums"]
    tensors = {k: v for k, v in head.items() if k != "__metadata__"}
    assert sums["algorithm"] == "sha256" and set(sums["tensors"]) == set(tensors)
    for name, t in tensors.items():
        begin, end = t["data_offsets"]
        assert sums["tensors"][name] == hashlib.sha256(raw[8 + n + begin:8 + n + end]).hexdigest(), name


@pytest.mark.parametrize("name", ["layers.0.attention.wq.trits", "layers.1.feed_forward.w2.scale",
                                  "layers.0.attention.wk.binary", "tok_embeddings.weight", "norm.weight"])
def test_a_flipped_bit_anywhere_is_named(capsys, d, tmp_path, name):
    raw, n, head = header(d / "q.safetensors")
    begin, end = head[name]["data_offsets"]
    at = 8 + n + (begin + end) // 2
    bad = bytearray(raw)
    bad[at] ^= 0x10
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    rc, _, err = run_ev(capsys, "--ckpt", tmp_path / "bad.safetensors")
    assert rc == 2 and err.count("\n") == 1
    assert f"bad.safetensors: {name}: its bytes do not match the sha256 checksum" in one_line_error(err)


def rewritten(src, dst, edit, checksums=True):
    """A copy of a packed file with `edit(tensors)` applied and, as a faulty writer would record them,
    checksums that agree with the new bytes (or none: a file from before checksums)."""
    with safe_open(str(src), "pt") as f:
        tensors, metadata = {n: f.get_tensor(n) for n in f.keys()}, f.metadata()
    edit(tensors)
    meta = json.loads(metadata["squeeze10"])
    if checksums:
        meta["checksums"] = kernels.checksums(tensors)
    else:
        del meta["checksums"]
    save_file(tensors, str(dst), metadata={"squeeze10": json.dumps(meta)})
    return dst


def test_a_file_without_checksums_still_loads(d, tmp_path):
    old = rewritten(d / "q.safetensors", tmp_path / "old.safetensors", lambda t: None, checksums=False)
    tokens = torch.arange(16)[None] % VOCAB
    with torch.inference_mode():
        assert torch.equal(llama.load_checkpoint(old)(tokens), llama.load_checkpoint(d / "q.safetensors")(tokens))


def linear_with_two_row_groups():
    """One packed linear, 8 × 32 with row-groups of 24 and 8 columns: every layout's bytes, valid."""
    g = torch.Generator().manual_seed(3)
    W, X = torch.randn(8, 32, generator=g), torch.randn(256, 32, generator=g)
    s = dataclasses.replace(sq.PRESETS["paper"], group_size=24, fias="off")
    stats = sq.Stats("off")
    stats.add(X, X)
    return sq.pack(sq.quantize_linears([W], stats, s)[0], s)


def test_invalid_encodings_are_reported_by_tensor_row_and_row_group():
    tensors, spec = linear_with_two_row_groups()
    assert spec["layout"] == "trits" and spec["k"] == [5, 2]
    kernels.check_encoding(tensors, spec)                                   # a valid linear passes
    # row-group 1 (8 wide) is the trits byte columns 5.. 6: 5 digits, then 3 (its last byte is below 3³ = 27)
    cases = [("trits", (3, 5), 250, "trits row 3, row-group 1: byte 250 above 242 = 3^5 - 1"),
             ("trits", (2, 0), 243, "trits row 2, row-group 0: byte 243 above 242 = 3^5 - 1"),
             ("trits", (4, 6), 27, "trits row 4, row-group 1: byte 27 sets base-3 digits past the row-group's width 8"),
             ("zero", (6, 1), 16, "zero row 6, row-group 1: zero point 16 is outside the 4-bit grid 0..15")]
    for key, at, value, message in cases:
        bad = {k: v.clone() for k, v in tensors.items()}
        bad[key][at] = value
        with pytest.raises(ValueError) as e:
            kernels.check_encoding(bad, spec)
        assert str(e.value) == message
    kernels.check_encoding(tensors, {**spec, "layout": "a future layout"})  # unknown layouts: not its business


def test_an_invalid_encoding_in_a_file_is_one_line(capsys, d, tmp_path):
    def edit(t):
        t["layers.1.attention.wv.zero"][2, 0] = 200
    bad = rewritten(d / "q.safetensors", tmp_path / "bad.safetensors", edit)
    rc, _, err = run_ev(capsys, "--ckpt", bad)
    line = one_line_error(err)
    assert rc == 2 and "layers.1.attention.wv: zero row 2, row-group 0: zero point 200 is outside" in line


# -----------------------------------------------------------------------------
# 4. config values of the wrong type or size

def test_configs_that_are_not_objects_or_hold_wrong_types(capsys, tmp_path):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp_path / "m", random_state(args), args)
    cases = [(["a", "list"], "params.json: holds a JSON list, not an object"),
             ({"dim": 32.0, "n_layers": 2, "n_heads": 4}, "dim = 32.0 in the config is not a positive integer"),
             ({"dim": 32, "n_layers": "2", "n_heads": 4}, "n_layers = '2' in the config is not a positive integer"),
             ({"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "vocab_size": "64"},
              "vocab_size = '64' is not a positive integer")]
    for params, message in cases:
        (tmp_path / "m" / "params.json").write_text(json.dumps(params))
        rc, _, err = run_ev(capsys, "--ckpt", tmp_path / "m")
        assert rc == 2 and err.count("\n") == 1 and message in one_line_error(err), err
    hf = hf_model(tmp_path / "hf")
    (hf / "config.json").write_text('"a string"')
    rc, _, err = run_ev(capsys, "--ckpt", hf)
    assert rc == 2 and "config.json: holds a JSON str, not an object" in one_line_error(err)


def test_a_config_too_large_to_build_is_refused_before_building(capsys, tmp_path):
    t0 = time.time()
    hf = hf_model(tmp_path / "hf", config={"num_hidden_layers": 10**9})
    rc, _, err = run_ev(capsys, "--ckpt", hf)
    assert rc == 2 and "the config says n_layers = 1000000000, the file holds 2 blocks" in one_line_error(err)
    # 2^20-wide layers: a 4 TiB model, built on the meta device only; the first tensor read disagrees
    hf = hf_model(tmp_path / "hf2", config={"hidden_size": 2**20, "num_attention_heads": 2**10,
                                           "num_key_value_heads": 2**9, "intermediate_size": 2**21})
    rc, _, err = run_ev(capsys, "--ckpt", hf)
    assert rc == 2 and "has shape" in one_line_error(err) and "the config implies" in err
    # sizes whose products overflow 64 bits
    hf = hf_model(tmp_path / "hf3", config={"hidden_size": 2**40, "num_attention_heads": 2**20,
                                           "num_key_value_heads": 2**19, "intermediate_size": 2**42})
    rc, _, err = run_ev(capsys, "--ckpt", hf)
    assert rc == 2 and "are too large to build" in one_line_error(err)
    assert time.time() - t0 < 30


def test_a_tensor_that_is_not_a_tensor(capsys, tmp_path):
    args = llama.ModelArgs(**TINY)
    for value, message in (([1.0, 2.0], "norm.weight is a list, not a tensor"),
                           (torch.ones(32, dtype=torch.int64), "norm.weight holds torch.int64, not floating-point")):
        state = random_state(args)
        write_meta(tmp_path / "m", state, args)
        torch.save({**state, "norm.weight": value}, tmp_path / "m" / "consolidated.00.pth")
        rc, _, err = run_ev(capsys, "--ckpt", tmp_path / "m")
        assert rc == 2 and message in one_line_error(err), err


# -----------------------------------------------------------------------------
# 5. flags

@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device gpu: not a device torch knows"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda:"),
    (["--temperature", "nan"], "--temperature nan: must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature inf: must be a finite number >= 0"),
    (["--seed", "-1"], "--seed -1: must be in 0 .. 2^63 - 1"),
    (["--seqlen", "abc"], "argument --seqlen: invalid int value"),
])
def test_bad_eval_flags_give_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in one_line_error(err)


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "--device gpu: not a device torch knows"),
    (["--seed", "-3"], "--seed -3: must be in 0 .. 2^63 - 1"),
    (["--seqlen", "256"], "--seqlen 256: longer than the model's context of 128 tokens"),
])
def test_bad_quantizer_flags_give_one_line_and_no_file(capsys, d, tmp_path, flags, message):
    rc, _, err = run_sq(capsys, *quantize_args(d, tmp_path / "q.safetensors"), *flags)
    assert rc == 2 and err.count("\n") == 1 and message in one_line_error(err)
    assert not any(tmp_path.iterdir())


def test_seqlen_beyond_the_context_is_refused_with_the_limit(capsys, d):
    rc, out, err = run_ev(capsys, "--ckpt", d / "tiny.gguf", "--text", d / "calib.txt", "--seqlen", 129)
    assert rc == 2 and "--seqlen 129: longer than the model's context of 128 tokens" in one_line_error(err)
    rc, out, err = run_ev(capsys, "--ckpt", d / "tiny.gguf", "--text", d / "calib.txt", "--seqlen", 128, "--windows", 1)
    assert rc == 0, err


def test_max_new_tokens_beyond_the_context_never_sizes_the_cache(capsys, d, monkeypatch):
    m = llama.load_checkpoint(d / "tiny.gguf")
    tok = ev.data.load_tokenizer(d / "tiny.gguf")
    sized = []
    monkeypatch.setattr(m, "setup_cache", lambda batch, max_len: sized.append(max_len))
    with pytest.raises(ev.data.DataError, match="exceed the model's context of 128 tokens"):
        ev.generate(m, tok, "hello", 10**12)
    assert sized == []
    rc, _, err = run_ev(capsys, "--ckpt", d / "tiny.gguf", "--generate", "hello", "--max-new-tokens", 200)
    assert rc == 2 and "--max-new-tokens 200: the prompt's" in one_line_error(err)


SLOW_EVAL = """
import sys, time
sys.path.insert(0, {root!r})
import eval as ev
def slow(*args, **kwargs):
    print("SCORING", flush=True)
    time.sleep(120)
ev.perplexity = slow
sys.exit(ev.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_eval_is_one_line(d, tmp_path, sig, code):
    script = tmp_path / "slow_eval.py"
    script.write_text(SLOW_EVAL.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), "--ckpt", str(d / "tiny.gguf"), "--text",
                             str(d / "calib.txt"), "--seqlen", "32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().startswith("SCORING")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and one_line_error(err) == f"error: interrupted by {signal.Signals(sig).name}"
