"""tools/gpu_check.py — everything this project does on a GPU, checked in one command (about 6 minutes).

    python tools/gpu_check.py                    # the three sections below, 360 s in all, a readable report
    python tools/gpu_check.py --json             # ... and a last line holding the whole report as JSON
    python tools/gpu_check.py --only kernels     # one section (tests, kernels, synthetic; comma-separated)

1. tests: the kernel test files (TEST_FILES) with pytest, in a child process, with TRITON_INTERPRET unset
   when CUDA is present, so that the Triton kernels are compiled for the GPU: pass/fail counts.
2. kernels: Triton version 1 (`kernels.triton_matmul`) and version 2 (`kernels.triton_matmul_columns`)
   against cuBLAS fp16 and bf16 at LLaMA-2-7B's shapes, batch 1 and 16: each product's relative error against
   a float64 product of the dequantized weight (`kernels.dequantize`), and its time: the median of `--reps`
   replays of a CUDA graph that holds one call per rotated copy of the weights (no cache holds them), and
   how many times faster than cuBLAS fp16 each kernel is ("vs fp16").
3. synthetic: `tools/synthetic.py llama2-7b --blocks 2 --device cuda` in a child process: seconds per block,
   peak device and host memory, the projection to all 32 blocks.

Needs only what the lent GPU image has (torch, triton, numba, numpy, safetensors, sentencepiece, pytest): no
network, no model files; the tests that write a tiny GGUF skip there (no gguf), and the report counts them.
Without CUDA it checks the Triton kernels under TRITON_INTERPRET=1 at a small shape and says, one line each,
what it skipped. Every section runs within its share of `--budget` (time a section leaves unused passes to the next).
Exit code 0: everything that ran passed; 1: a check failed (or ran out of its time); 2: bad flags.

Not part of the method: a reader can skip this file.
"""
import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from functools import partial
from itertools import groupby
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the repository root: run as python tools/gpu_check.py
from tools import cli  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# kernels.py decides at import whether Triton runs compiled or interpreted: set before it is imported
if CUDA:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

SECTIONS = ("tests", "kernels", "synthetic")
SHARES = dict(tests=0.30, kernels=0.25, synthetic=0.45)   # of the time left when a section starts (see budget_for)
RESERVE_S = 5                                             # kept back for the summary
# none of them loads the embedded model (each writes its own tiny GGUF), so nothing is deselected without it
TEST_FILES = ("tests/test_kernels.py", "tests/test_triton_columns.py", "tests/test_numba_columns.py")
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]    # LLaMA-2-7B: q/k/v/o, gate/up, down
BATCHES = (1, 16)
INTERPRET_SHAPE = (48, 256)                               # without CUDA: small, the interpreter is slow
# a kernel's y against float64: fp32 activations as the tests hold them (the sums' rounding, ~1e-6 at 7B's
# widths); fp16 activations give a fp16 y, rounded to 2^-11 of its size (~3e-4 in norm)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class Section:
    """One section's outcome: status passed | failed | skipped, its seconds, its figures (`data`), and the
    lines it skipped (each one thing and why)."""
    def __init__(self, name: str):
        self.name, self.status, self.seconds, self.summary = name, "passed", 0.0, ""
        self.data, self.skipped, self.failures = {}, [], []

    def skip(self, what: str, why: str):
        self.skipped.append(f"{what}: {why}")
        say(f"  skipped: {what}: {why}")

    def fail(self, what: str):
        self.status = "failed"
        self.failures.append(what)
        say(f"  FAILED: {what}")

    def as_dict(self) -> dict:
        return dict(status=self.status, seconds=round(self.seconds, 1), summary=self.summary, skipped=self.skipped,
                    failures=self.failures, **self.data)


def say(line: str = ""):
    print(line, flush=True)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_child(cmd: list, timeout: float, env: dict | None = None) -> tuple:
    """Run cmd in ROOT as its own process group: (exit code, or None when it ran past `timeout` seconds and was
    killed with all it started; stdout; stderr; seconds)."""
    t0 = time.time()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)

    def kill_all():
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:                          # all of them had ended already
            pass
    try:
        out, err = child.communicate(timeout=max(1.0, timeout))
        return child.returncode, out, err, time.time() - t0
    except subprocess.TimeoutExpired:
        kill_all()
        out, err = child.communicate()
        return None, out, err, time.time() - t0
    except BaseException:                                   # Ctrl-C (cli.Interrupted): leave nothing running
        kill_all()
        child.communicate()
        raise


def last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


# -----------------------------------------------------------------------------
# 1. The kernel test files

def pytest_counts(output: str) -> dict:
    """{"passed": 12, "failed": 2, ...} from pytest's last summary line ("2 failed, 12 passed in 3.4s")."""
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    if not summary:
        return {}
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
            for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                                      summary[-1])}


def run_tests(sec: Section, timeout: float, files=TEST_FILES, extra=()):
    """`python -m pytest -q FILES` in a child process; on CUDA without TRITON_INTERPRET (conftest.py sets it
    only when no CUDA device is present), so the Triton tests run compiled."""
    if package_version("pytest") is None:
        return sec.skip("the kernel test files", "pytest is not installed")
    env = dict(os.environ, SQUEEZE10_GPU_CHECK="1")   # tests needing gguf (not on a bare GPU image) skip, counted
    if CUDA:
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *files, *extra]
    say(f"  {' '.join(['python', *cmd[1:]])}  (TRITON_INTERPRET {env.get('TRITON_INTERPRET', 'unset')}, "
        f"at most {timeout:.0f} s)")
    rc, out, err, seconds = run_child(cmd, timeout, env)
    counts = pytest_counts(out)
    failed = [line.split(" - ")[0].split(" ", 1)[1] for line in out.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    sec.data.update(counts=counts, failed_tests=failed, exit_code=rc)
    sec.summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" in {seconds:.0f} s"
    if rc is None:
        return sec.fail(f"pytest ran past {timeout:.0f} s and was stopped (last output: {last_lines(out + err)})")
    say(f"  {sec.summary}")
    for name in failed:
        say(f"    failed: {name}")
    if rc != 0 or not counts.get("passed"):
        sec.fail(f"pytest exit code {rc}" + ("" if counts else f" ({last_lines(out + err)})"))


def tests_section(sec: Section, timeout: float, extra=()):
    if not CUDA:
        return sec.skip("the kernel test files on the GPU", "no CUDA device (CI runs them under TRITON_INTERPRET=1)")
    run_tests(sec, timeout, extra=extra)


# -----------------------------------------------------------------------------
# 2. The Triton kernels against cuBLAS and against float64

def exact_v1_bytes(out: int, n_in: int, seed: int = 0):
    """bench.random_bytes (version 1, the paper preset's shapes) with exact salient counts: every row-group of
    every row holds exactly k salient weights, so that kernels.dequantize accepts it (random_bytes' trits are
    random bytes, enough for timing, not for a reference product). The random states are drawn on DEVICE,
    row-groups of one width and k at once (at 7B's shapes: all of them), and packed by kernels.pack_trits."""
    import kernels
    from tools import bench
    t, spec = bench.random_bytes(out, n_in, seed=seed)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    parts = []
    for (width, k), run in groupby(zip(kernels.group_widths(n_in, spec["group_size"]), spec["k"])):
        n = len(list(run))                                # this many row-groups in a row of this width and k
        salient = torch.rand(out, n, width, generator=g, device=DEVICE).argsort(-1) < k
        states = torch.where(salient, 2, torch.randint(0, 2, (out, n, width), generator=g, device=DEVICE))
        parts.append(kernels.pack_trits(states.cpu().reshape(out * n, width)).reshape(out, -1))
    t["trits"] = torch.cat(parts, 1)
    return t, spec


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ with ref the float64 product."""
    return float((y.double() - ref).norm() / ref.norm())


def graph_ms(calls: list, reps: int) -> tuple:
    """(median ms per call, note): `calls` captured once in a CUDA graph, the graph replayed `reps` times, each
    replay timed by CUDA events. Without a graph (capture failed) the calls are launched and timed the same way,
    and the note says so."""
    side = torch.cuda.Stream()                             # warm-up on a side stream, as torch's docs ask
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls[:3]:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    note = ""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        replay = graph.replay
    except Exception as e:                                 # each library raises its own type
        torch.cuda.synchronize()
        note = f"CUDA graph capture failed ({cli.first_line(e)}): timed without a graph"

        def replay():
            for call in calls:
                call()
    replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return sorted(times)[len(times) // 2], note


def check_product(sec: Section, row: dict, name: str, x: torch.Tensor, ref: torch.Tensor, product, tensors):
    """product(x, tensors)'s relative error against `ref` (x's float64 product) in row["rel_err"]; beyond
    TOLERANCE for x's dtype, or raising, fails the section."""
    key, tol = f"{name} {DTYPE_NAMES[x.dtype]}", TOLERANCE[x.dtype]
    try:
        err = rel_error(product(x, tensors), ref)
    except Exception as e:                                 # a kernel that does not compile or launch, say
        row["rel_err"][key] = None
        return sec.fail(f"{key} at {row['shape']}, batch {row['batch']}: {type(e).__name__}: {cli.first_line(e)}")
    row["rel_err"][key] = float(f"{err:.3g}")
    if not err <= tol:                                     # (NaN fails too)
        sec.fail(f"{key} at {row['shape']}, batch {row['batch']}: relative error {err:.3g} against float64, "
                 f"more than {tol:g}")


def kernels_section(sec: Section, timeout: float, reps: int):
    """Correctness of both Triton kernels at every shape and batch; on CUDA their times against cuBLAS."""
    deadline = time.time() + timeout
    try:
        import kernels
        from tools import bench
    except ImportError as e:
        return sec.skip("the Triton kernels", f"the project cannot be imported here ({e})")
    if kernels.triton is None:
        return sec.skip("the Triton kernels", "the triton package is not installed")
    torch.manual_seed(0)
    shapes = SHAPES if CUDA else [INTERPRET_SHAPE]
    if not CUDA:
        sec.skip("the kernels at LLaMA-2-7B's shapes, their times, cuBLAS", "no CUDA device (instead: their "
                 f"correctness, interpreted, at {INTERPRET_SHAPE[0]}x{INTERPRET_SHAPE[1]})")
    times = f"{'fp16 ms':>8} {'bf16 ms':>8} {'v1 ms':>8} {'vs fp16':>8} {'v2 ms':>8} {'vs fp16':>8}  " if CUDA else ""
    say(f"  {'shape':>10} {'batch':>5}  {times}relative error against float64: v1 and v2 with fp32 / fp16 x")
    rows = []
    for out, n_in in shapes:
        if time.time() > deadline:
            sec.skip(f"kernels at {out}x{n_in}", "the section's time was spent")
            continue
        t1, spec1 = exact_v1_bytes(out, n_in)
        t2, spec2 = bench.random_columns_bytes(out, n_in)
        t1 = {n: v.to(DEVICE) for n, v in t1.items()}
        t2 = {n: v.to(DEVICE) for n, v in t2.items()}
        # name -> (packed tensors, y = product(x, tensors), the dense weight in float64)
        packed = {"v1": (t1, partial(kernels.triton_matmul, spec=spec1, groups=kernels.group_table(spec1).to(DEVICE)),
                         kernels.dequantize(t1, spec1).double()),
                  "v2": (t2, partial(kernels.triton_matmul_columns, spec=spec2,
                                     table=kernels.columns_gpu_table(t2, spec2)),
                         kernels.dequantize(t2, spec2).double())}
        for batch in BATCHES:
            row = {"shape": f"{out}x{n_in}", "batch": batch, "rel_err": {}}
            x32 = torch.randn(batch, n_in, device=DEVICE)
            for x in (x32, x32.half()):
                for name, (t, product, W) in packed.items():
                    check_product(sec, row, name, x, x.double() @ W.T, product, t)
            if CUDA:
                try:
                    time_row(row, x32.half(), packed, reps, bench.copies)
                except Exception as e:                     # out of memory, a launch that fails, ...
                    sec.fail(f"timing at {out}x{n_in}, batch {batch}: {type(e).__name__}: {cli.first_line(e)}")
            print_row(row)
            rows.append(row)
        del packed
    sec.data["rows"] = rows
    sec.summary = f"{len(rows)} shape x batch rows" + (", timed with CUDA graphs" if CUDA else ", interpreted")


def time_row(row: dict, x: torch.Tensor, packed: dict, reps: int, copies):
    """row's times (ms) with fp16 x: cuBLAS fp16 and bf16 on v1's dense weight (and their relative errors, for
    comparison), both kernels; each over rotated copies of its weight (bench.copies: at least 256 MB of them,
    so that L2 holds none between calls)."""
    W = packed["v1"][2]
    calls = {}
    for dtype in (torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        dense = [W.to(dtype) for _ in range(copies(2 * W.numel()))]
        calls[DTYPE_NAMES[dtype]] = [partial(torch.matmul, xd, w.T) for w in dense]
        row["rel_err"][f"dense {DTYPE_NAMES[dtype]}"] = float(f"{rel_error(xd @ dense[0].T, xd.double() @ W.T):.3g}")
    for name, (t, product, _) in packed.items():
        nbytes = sum(v.nbytes for v in t.values())
        rotated = [{n: v.clone() for n, v in t.items()} for _ in range(copies(nbytes))]   # same bytes elsewhere
        calls[name] = [partial(product, x, c) for c in rotated]
        row[f"{name}_bytes"] = nbytes
    notes = set()
    for name, group in calls.items():
        ms, note = graph_ms(group, reps)
        row[f"{name}_ms"] = round(ms, 4)
        notes.add(note)
    row["speedup_vs_fp16"] = {v: round(row["fp16_ms"] / row[f"{v}_ms"], 3) for v in ("v1", "v2")}
    row["graphs"] = notes == {""}
    if not row["graphs"]:
        row["note"] = "; ".join(sorted(n for n in notes if n))


def print_row(row: dict):
    """One line of the kernels' table: the times (when measured), then the relative errors."""
    def errs(v):
        return " / ".join("-" if row["rel_err"].get(f"{v} {d}") is None else f"{row['rel_err'][f'{v} {d}']:.1e}"
                          for d in ("fp32", "fp16"))
    times = ""
    if "v2_ms" in row:
        speed = row["speedup_vs_fp16"]
        times = (f"{row['fp16_ms']:8.4f} {row['bf16_ms']:8.4f} {row['v1_ms']:8.4f} {speed['v1']:7.2f}x "
                 f"{row['v2_ms']:8.4f} {speed['v2']:7.2f}x  ")
    say(f"  {row['shape']:>10} {row['batch']:5d}  {times}v1 {errs('v1')}, v2 {errs('v2')}")
    if "dense fp16" in row["rel_err"]:
        say(f"  {'':16} (cuBLAS: fp16 {row['rel_err']['dense fp16']:.1e}, bf16 {row['rel_err']['dense bf16']:.1e}; "
            f"its weights rounded to 16 bits)")
    if row.get("note"):
        say(f"    note: {row['note']}")


# -----------------------------------------------------------------------------
# 3. The synthetic LLaMA-2-7B quantization on CUDA

def synthetic_section(sec: Section, timeout: float, blocks: int, nsamples: int, extra: list):
    if not CUDA:
        return sec.skip("the synthetic LLaMA-2-7B quantization", "no CUDA device (on the CPU: python "
                        "tools/synthetic.py llama2-7b --blocks 1, minutes a block)")
    cmd = [sys.executable, "tools/synthetic.py", "llama2-7b", "--blocks", str(blocks), "--device", "cuda",
           "--nsamples", str(nsamples), "--json", *extra]
    say(f"  {' '.join(['python', *cmd[1:]])}  (at most {timeout:.0f} s)")
    rc, out, err, seconds = run_child(cmd, timeout)
    if rc is None:
        return sec.fail(f"tools/synthetic.py ran past {timeout:.0f} s and was stopped (last log: {last_lines(err)})")
    try:
        report = json.loads(out.strip().splitlines()[-1])
        per_block = report["seconds_per_block"]
    except (IndexError, ValueError, KeyError, TypeError):
        return sec.fail(f"tools/synthetic.py exit code {rc}, no JSON report ({last_lines(err)})")
    sec.data.update(report=report, wall_seconds=round(seconds, 1))
    if rc != 0:
        return sec.fail(f"tools/synthetic.py exit code {rc} ({last_lines(err)})")
    cal = report.get("calibration", {})
    gib = {k: f"{report[k] / 1024:.2f} GiB" if k in report else "?" for k in ("peak_cuda_mb", "peak_rss_mb")}
    sec.summary = (f"{per_block:.1f} s a block, {report['extrapolated_seconds'] / 60:.1f} min projected for "
                   f"{report['model_blocks']} blocks; peak CUDA {gib['peak_cuda_mb']}, peak RSS {gib['peak_rss_mb']}")
    acts = f", activations {report['activations']}" if "activations" in report else ""
    say(f"  llama2-7b, {report['blocks']} blocks, calibration {cal.get('nsamples')} x {cal.get('seqlen')} tokens"
        f"{acts}: {sec.summary} (the whole command: {seconds:.0f} s)")


# -----------------------------------------------------------------------------
# The command

def budget_for(name: str, todo: list, deadline: float) -> float:
    """This section's seconds: its share of the time left, among the sections still to run."""
    left = deadline - RESERVE_S - time.time()
    return max(0.0, left * SHARES[name] / sum(SHARES[s] for s in todo))


def describe_machine() -> dict:
    info = dict(torch=torch.__version__, triton=package_version("triton"), cuda=CUDA,
                triton_interpret=os.environ.get("TRITON_INTERPRET") == "1")
    if CUDA:
        info.update(device=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda,
                    device_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def parse_args(argv):
    p = cli.Parser(description="Check in one command (about 6 minutes) everything this project does on a GPU: "
                               "the kernel tests, the Triton kernels against cuBLAS, a synthetic LLaMA-2-7B "
                               "quantization. Without CUDA: what the CPU can, and what it skipped.")
    p.add_argument("--budget", type=float, default=360.0, help="seconds for the whole check (default 360)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, comma-separated (default "
                   f"{','.join(SECTIONS)})")
    p.add_argument("--reps", type=int, default=7, help="timed replays of each CUDA graph; the median (default 7)")
    p.add_argument("--blocks", type=int, default=2, help="synthetic: blocks of LLaMA-2-7B to quantize (default 2)")
    p.add_argument("--nsamples", type=int, default=32, help="synthetic: calibration windows of 2048 tokens "
                   "(default 32)")
    p.add_argument("--synthetic-args", default="", help="more flags for tools/synthetic.py, e.g. "
                   "--synthetic-args=--offload")
    p.add_argument("--pytest-args", default="", help="more arguments for pytest, e.g. "
                   "--pytest-args='-k columns'")
    p.add_argument("--json", action="store_true", help="last stdout line: the whole report as one JSON object")
    a = p.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in a.only if s not in SECTIONS]
    if unknown or not a.only:
        p.error(f"--only {','.join(a.only)}: choose from {', '.join(SECTIONS)}")
    if not a.budget > 0:
        p.error(f"--budget {a.budget}: must be more than 0 seconds")
    for flag in ("reps", "blocks", "nsamples"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} {getattr(a, flag)}: must be at least 1")
    try:
        a.synthetic_args, a.pytest_args = shlex.split(a.synthetic_args), shlex.split(a.pytest_args)
    except ValueError as e:
        p.error(f"--synthetic-args / --pytest-args: {e}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.time()
    deadline = t0 + a.budget
    machine = describe_machine()
    if CUDA:
        say(f"squeeze10 GPU check on {machine['device']} ({machine['device_gib']} GiB), torch {machine['torch']}, "
            f"CUDA {machine['cuda_version']}, triton {machine['triton']}; budget {a.budget:.0f} s")
    else:
        say(f"squeeze10 GPU check: no CUDA device (torch {machine['torch']}, triton {machine['triton']}): "
            f"what the CPU can run, Triton interpreted; budget {a.budget:.0f} s")
    run = {"tests": lambda sec, s: tests_section(sec, s, a.pytest_args),
           "kernels": lambda sec, s: kernels_section(sec, s, a.reps),
           "synthetic": lambda sec, s: synthetic_section(sec, s, a.blocks, a.nsamples, a.synthetic_args)}
    titles = dict(tests="the kernel test files", kernels="Triton v1 and v2 against cuBLAS and float64",
                  synthetic="synthetic LLaMA-2-7B quantization on CUDA")
    sections = {}
    for i, name in enumerate(SECTIONS, 1):
        sec = sections[name] = Section(name)
        if name not in a.only:
            sec.status = "skipped"
            sec.skipped.append(f"{titles[name]}: not in --only")
            continue
        seconds = budget_for(name, [s for s in SECTIONS[i - 1:] if s in a.only], deadline)
        say(f"\n{i}. {titles[name]} (at most {seconds:.0f} s)")
        start = time.time()
        if seconds < 1:
            sec.skip(titles[name], "no time left in --budget")
        else:
            try:
                run[name](sec, seconds)
            except Exception as e:                         # a bug or a broken machine: this section fails, not all
                traceback.print_exc()
                sec.fail(f"{type(e).__name__}: {cli.first_line(e)}")
        sec.seconds = time.time() - start
        if sec.status == "passed" and sec.skipped and not sec.data:
            sec.status = "skipped"
    failed = [name for name, sec in sections.items() if sec.status == "failed"]
    say("\nsummary")
    for name, sec in sections.items():
        say(f"  {name:9} {sec.status:7} {sec.seconds:6.1f} s  {sec.summary}")
    for name, sec in sections.items():
        for line in sec.skipped:
            say(f"  skipped: {line}")
    total = time.time() - t0
    say(f"FAILED: {', '.join(failed)}; {total:.0f} s" if failed else f"passed: everything that ran; {total:.0f} s")
    if a.json:
        print(json.dumps(dict(passed=not failed, seconds=round(total, 1), budget_s=a.budget, machine=machine,
                              sections={name: sec.as_dict() for name, sec in sections.items()})))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
