"""tools/bench.py — the kernels timed against the dense product they replace, and the decode speed they give.

    python tools/bench.py [--json]        # dense vs packed matmul on LLaMA-2-7B and SmolLM2 shapes, then decode
    python tools/bench.py --shapes 576x576 --decode ''        # one shape, no decode rows
    python tools/bench.py --shapes none       # decode rows only (full precision, version 1 and 2)
    python tools/bench.py --asm            # which vector instructions the numba kernels compiled to

Not part of the method: a reader of kernels.py can skip this file. The packed weights timed here are random
bytes in the default preset's shapes (`random_bytes`, `random_cpu_layout`, ...): a kernel's work does not
depend on the values. Every figure is a median over rounds taken in turn, over rotated copies of the weights
(at least ROTATE_BYTES of them), so that no cache holds the weights between calls, as in a real model.
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: run as python tools/bench.py
import kernels  # noqa: E402
import model  # noqa: E402
from kernels import COLUMNS, LANES, ColumnsLayout, bit_bytes, by_blocks, group_widths, salient_count  # noqa: E402
from tools import cli  # noqa: E402

BENCH_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008),              # LLaMA-2-7B: q/k/v/o, gate/up, down
                (576, 576), (192, 576), (1536, 576), (576, 1536)]         # SmolLM2-135M: q/o, k/v, gate/up, down
BENCH_BATCHES = (1, 4, 16)
ROTATE_BYTES = 256 << 20   # weight copies rotated per measurement: at least this many bytes, so caches can't hold them


# -----------------------------------------------------------------------------
# Random packed weights of the default presets' shapes

def random_bytes(out: int, n_in: int, salient: float = 0.2, high_bits: int = 4, group_size: int = 128, seed=0):
    """Version 1's packed tensors (the paper preset) filled with random bytes: for timing only (a row-group's
    salient count is not kept exact; the Triton kernel's work does not depend on it)."""
    g = torch.Generator().manual_seed(seed)
    ks = [salient_count(salient, w) for w in group_widths(n_in, group_size)]
    spec = dict(shape=[out, n_in], group_size=group_size, high_bits=high_bits, layout="trits", k=ks)
    t = {name: torch.randint(0, 243 if name == "trits" else 256, shape, generator=g, dtype=dtype)
         if dtype == torch.uint8 else (torch.rand(shape, generator=g) * 0.01).to(dtype)
         for name, (shape, dtype) in kernels.expected_shapes(spec).items()}
    return t, spec


def random_columns_bytes(out: int, n_in: int, salient: float = 0.2, high_bits: int = 4, group_size: int = 128,
                         block_rows: int = 32, seed=0):
    """The default preset's version-2 tensors, random but valid (each row-block marks exactly k columns; fp8
    scales with column scales): for timing."""
    g = torch.Generator().manual_seed(seed)
    k = salient_count(salient, n_in)
    spec = dict(shape=[out, n_in], group_size=group_size, high_bits=high_bits, layout=COLUMNS, k=k,
                block_rows=block_rows, scales="fp8", column_scale=True, unit_exp=-8)
    shapes = kernels.expected_columns_shapes(spec)
    t = {name: torch.randint(0, 256, shape, generator=g, dtype=dtype) if dtype == torch.uint8
         else (torch.rand(shape, generator=g) * 64 + 1).to(dtype) for name, (shape, dtype) in shapes.items()}
    marks = torch.zeros(kernels.column_blocks(spec), 8 * shapes["columns"][0][1], dtype=torch.int32)
    for b in range(len(marks)):
        marks[b, torch.randperm(n_in, generator=g)[:k]] = 1
    t["columns"] = kernels.pack_bits(marks, 1)
    return t, spec


def random_cpu_layout(out: int, n_in: int, salient: float = 0.2, high_bits: int = 4, group_size: int = 128, seed=0):
    """What kernels.cpu_layout makes of a random linear of the paper preset, built directly (for timing)."""
    rng = np.random.default_rng(seed)
    widths = group_widths(n_in, group_size)
    ks = [salient_count(salient, w) for w in widths]
    pos_bits = max(1, (group_size - 1).bit_length())
    sal = [np.sort(rng.integers(0, w, (out, k)), 1) | (rng.integers(0, 2 ** high_bits, (out, k)) << pos_bits)
           for w, k in zip(widths, ks)]
    nsign = [bit_bytes(w, 1) for w in widths]
    groups = np.array([[g * group_size, w, sum(nsign[:g]), sum(nsign[:g + 1]), sum(ks[:g]), k]
                       for g, (w, k) in enumerate(zip(widths, ks))], dtype=np.int64)
    signs = torch.from_numpy(rng.integers(0, 256, (out, sum(nsign)), dtype=np.uint8))
    return dict(signs=by_blocks(signs, LANES),
                sal=by_blocks(torch.from_numpy(np.concatenate(sal, 1).astype(np.int32)), LANES).astype(np.uint16),
                const=by_blocks(torch.from_numpy(rng.standard_normal((out, len(widths), 4), dtype=np.float32)), LANES),
                groups=groups, pos_bits=pos_bits, n_codes=1 << high_bits, shape=(out, n_in))


def random_columns_layout(out: int, n_in: int, copies: int = 1, seed=0) -> list:
    """`copies` layouts of one random linear of the default preset (kernels.columns_cpu_layout of
    random_columns_bytes): the first made once, the others its records copied to new memory (for timing)."""
    lay = kernels.columns_cpu_layout(*random_columns_bytes(out, n_in, seed=seed))
    return [lay] + [dataclasses.replace(lay, data=lay.data.copy()) for _ in range(copies - 1)]


def layout_bytes(lay) -> int:
    """Bytes a product reads of a CPU layout (version 1's dict, or a ColumnsLayout)."""
    if isinstance(lay, ColumnsLayout):
        return lay.nbytes()
    return sum(v.nbytes for v in lay.values() if isinstance(v, np.ndarray) and v is not lay["groups"])


# -----------------------------------------------------------------------------
# Timing

def median_ms(fn, reps: int, budget_s: float = 1.0) -> float:
    """The median of `reps` timed calls, fewer (at least 3) where that many would take over budget_s (the
    plain twins at batch 16)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(3, min(reps, int(budget_s / max(first, 1e-9))))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def copy_gbps(nbytes: int = ROTATE_BYTES, reps: int = 5) -> float:
    """This machine's memory bandwidth as a copy of `nbytes` reaches it: GB/s read (a copy reads and writes each
    byte once; the figure counts the reads, what a matmul's weights cost)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps)
    return nbytes / ms / 1e6


def copies(one_bytes: int) -> int:
    """How many copies of a weight of `one_bytes` make at least ROTATE_BYTES (2 to 64)."""
    return max(2, min(64, -(-ROTATE_BYTES // one_bytes)))


def rotated(make, one_bytes: int) -> list:
    """Enough copies of a weight that cycling through them reads at least ROTATE_BYTES: no cache holds them."""
    return [make(i) for i in range(copies(one_bytes))]


def cpu_weights(out, n_in) -> dict:
    """Rotated copies of one shape's weights in every form the CPU benchmark times, and the file's bytes of
    version 2 (what the packed file stores for this linear)."""
    v2_file = sum(t.nbytes for t in random_columns_bytes(out, n_in)[0].values())
    v2 = random_columns_layout(out, n_in)
    return {"fp32": rotated(lambda i: torch.randn(out, n_in), 4 * out * n_in),
            "bf16": rotated(lambda i: torch.randn(out, n_in).bfloat16(), 2 * out * n_in),
            "v1": rotated(lambda i: random_cpu_layout(out, n_in, seed=i), layout_bytes(random_cpu_layout(out, n_in))),
            "v2": random_columns_layout(out, n_in, copies(layout_bytes(v2[0]))), "v2_file": v2_file}


def v2_rows() -> dict:
    """The version-2 rows: the default lookups ("v2"), each other instruction set the CPU has, the plain twins."""
    best = kernels.nibble_isa()
    return {"v2" if isa == best else f"v2-{isa}": isa for isa in reversed(kernels.cpu_isas())}


def bench_cpu(w: dict, batch: int, reps: int):
    """Medians (ms) of dense fp32, dense bf16, version 1 (IR loops, plain twins), version 2 (every instruction
    set of v2_rows), each measured in turn, five rounds, over rotated copies of its weights (`cpu_weights`)."""
    n_in = w["fp32"][0].shape[1]
    x = torch.randn(batch, n_in)
    xb = x.bfloat16()
    calls = {"fp32": lambda i: x @ w["fp32"][i % len(w["fp32"])].T,
             "bf16": lambda i: xb @ w["bf16"][i % len(w["bf16"])].T,
             "v1": lambda i: kernels.numba_matmul(x, w["v1"][i % len(w["v1"])], ir=True),
             "v1-plain": lambda i: kernels.numba_matmul(x, w["v1"][i % len(w["v1"])], ir=False)}
    for name, isa in v2_rows().items():
        calls[name] = lambda i, isa=isa: kernels.columns_matmul(x, w["v2"][i % len(w["v2"])], isa=isa)
    for call in calls.values():
        call(0)                                                   # compile (or load from numba's cache)
    ms = {name: [] for name in calls}
    for _ in range(5):                                            # in turn, so that all see the same machine
        for name, call in calls.items():
            it = iter(range(1 << 30))
            ms[name].append(median_ms(lambda: call(next(it)), reps))
    return {name: sorted(v)[2] for name, v in ms.items()}, {"v1": layout_bytes(w["v1"][0]),
                                                           "v2": layout_bytes(w["v2"][0])}


def bench_cuda(shape, batch, reps):
    """Medians (ms) of dense fp16, version 1 and version 2 with the Triton kernels, seven rounds in turn."""
    out, n_in = shape
    dense = [torch.randn(out, n_in, device="cuda", dtype=torch.float16) for _ in range(copies(2 * out * n_in))]
    t, spec = random_bytes(out, n_in)
    kbytes = sum(v.nbytes for v in t.values())
    packs = [({n: v.cuda() for n, v in random_bytes(out, n_in, seed=i)[0].items()}, spec,
              kernels.group_table(spec).cuda()) for i in range(copies(kbytes))]
    t2, spec2 = random_columns_bytes(out, n_in)
    kbytes2 = sum(v.nbytes for v in t2.values())
    packs2 = []
    for i in range(copies(kbytes2)):
        t2 = {n: v.cuda() for n, v in random_columns_bytes(out, n_in, seed=i)[0].items()}
        packs2.append((t2, spec2, kernels.columns_gpu_table(t2, spec2)))
    x = torch.randn(batch, n_in, device="cuda", dtype=torch.float16)
    kernels.triton_matmul(x, *packs[0])                           # compile
    kernels.triton_matmul_columns(x, *packs2[0])

    def timed(calls):  # ms per call: `reps` calls between two events (a sync per call would cost more than them)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(reps):
            calls(i)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    ms = {"fp16": [], "v1": [], "v2": []}
    for _ in range(7):
        ms["fp16"].append(timed(lambda i: x @ dense[i % len(dense)].T))
        ms["v1"].append(timed(lambda i: kernels.triton_matmul(x, *packs[i % len(packs)])))
        ms["v2"].append(timed(lambda i: kernels.triton_matmul_columns(x, *packs2[i % len(packs2)])))
    return {name: sorted(v)[3] for name, v in ms.items()}, {"v1": kbytes, "v2": kbytes2}


def bench(as_json: bool, backend: str, reps: int, shapes=BENCH_SHAPES, batches=BENCH_BATCHES, copy=None) -> list:
    """One row per shape, batch and packed layout: its time, the dense products', the speedup over dense fp32
    (fp16 on CUDA), the bytes it reads and the GB/s that makes. Printed (not in the rows): the speedup over
    bf16, the GB/s as a share of `copy` (a copy's GB/s), and for version 2 the bytes its file holds."""
    rows = []
    dense = "fp16" if backend == "triton" else "fp32"
    if not as_json:
        print(f"{'backend':8} {'layout':10} {'shape':>11} {'batch':>5} {dense + ' ms':>9} {'bf16 ms':>8} "
              f"{'kernel ms':>9} {'speedup':>7} {'vs bf16':>7} {'MB read':>7} {'file MB':>7} {'GB/s':>6} "
              f"{'% copy':>6}")
    for out, n_in in shapes:
        weights = (out, n_in) if backend == "triton" else cpu_weights(out, n_in)
        for batch in batches:
            run = bench_cuda if backend == "triton" else bench_cpu
            ms, nbytes = run(weights, batch, reps)
            for layout in [k for k in ms if k.startswith("v")]:
                kbytes = nbytes[layout[:2]]
                row = dict(backend=backend, layout=layout, shape=f"{out}x{n_in}", batch=batch,
                           dense_ms=round(ms[dense], 4), bf16_ms=round(ms["bf16"], 4) if "bf16" in ms else None,
                           kernel_ms=round(ms[layout], 4), speedup=round(ms[dense] / ms[layout], 3),
                           bytes=kbytes, gbps=round(kbytes / ms[layout] / 1e6, 2))
                rows.append(row)
                if not as_json:
                    bf = f"{row['bf16_ms']:8.3f}" if row["bf16_ms"] is not None else f"{'':8}"
                    vs_bf = f"{row['bf16_ms'] / ms[layout]:7.2f}" if row["bf16_ms"] is not None else f"{'':7}"
                    file_mb = weights["v2_file"] / 1e6 if layout.startswith("v2") and backend != "triton" else None
                    file_mb = f"{file_mb:7.2f}" if file_mb else f"{'':7}"
                    share = f"{100 * row['gbps'] / copy:6.0f}" if copy else f"{'':6}"
                    print(f"{backend:8} {layout:10} {row['shape']:>11} {batch:5d} {ms[dense]:9.3f} {bf} "
                          f"{ms[layout]:9.3f} {row['speedup']:7.2f} {vs_bf} {kbytes / 1e6:7.2f} {file_mb} "
                          f"{row['gbps']:6.1f} {share}", flush=True)
    return rows


def decode_bench(files: dict, rounds: int = 3, tokens: int = 64) -> dict:
    """Greedy decoding of the embedded model for each checkpoint of `files` (name -> path; None: full
    precision), all loaded in this process and timed in turn, `rounds` times: the median tokens/s over
    `tokens` decode steps (EOS does not stop them: every model does the same work), where a step's time goes
    (ms: the block linears' calls and how many there are, the output head, everything else), and whether each
    packed file picks the same first 8 tokens through the reference path. Each model twice: through the
    decode path (model.Decoder, as eval.py's generation runs) and through forward() ("-forward": its plain
    twin, the step before the Decoder)."""
    @torch.inference_mode()
    def greedy(m, decode_path, spent=None, steps=tokens):
        m.setup_cache(1, 4 + steps, fp16_head=True, decode_path=decode_path)    # as eval.py's generation decodes
        logits = m(torch.tensor([[504, 3575, 282, 4649, 314]]))[0, -1]     # "The capital of France is"
        if spent is not None:
            spent[:] = [0.0, 0]                              # (the prefill does not count)
        ids, t0 = [], time.perf_counter()
        for pos in range(5, 4 + steps):
            ids.append(int(logits.argmax()))
            logits = m(torch.tensor([[ids[-1]]]), start=pos)[0, -1]
        dt = time.perf_counter() - t0
        m.setup_cache(None, 0)
        return ids, (steps - 1) / dt
    models = {name: model.load_checkpoint(path) for name, path in files.items()}
    runs = {}
    for name, m in models.items():
        runs[name] = (m, True)
        runs[f"{name}-forward"] = (m, False)
    speeds = {name: [] for name in runs}
    ids = {}
    for _ in range(rounds):
        for name, (m, path) in runs.items():
            ids[name], speed = greedy(m, path)
            speeds[name].append(speed)
    result = {f"{name}_tok_s": round(sorted(v)[len(v) // 2], 2) for name, v in speeds.items()}
    for name, (m, path) in runs.items():
        step, calls, head_ms = linears_time(m, path, lambda spent: greedy(m, path, spent)[1], tokens - 1)
        step_ms = 1e3 / step
        result[f"{name}_ms_per_step"] = {"total": round(step_ms, 2), "linears": round(calls[0], 2),
                                         "linear_calls": calls[1], "head": round(head_ms, 2),
                                         "rest": round(step_ms - calls[0] - head_ms, 2)}
        if name.endswith("-forward"):                        # the decode path picks forward()'s tokens
            result[f"{name[:-len('-forward')]}_same_tokens_as_forward"] = ids[name] == ids[name[:-len("-forward")]]
    for name, path in files.items():
        if path is not None:                                 # the reference path unpacks every weight at every
            model.set_backend(models[name], "reference")     # step (~4 s here): the first 8 tokens
            result[f"{name}_same_tokens_as_reference"] = greedy(models[name], False, steps=9)[0] == ids[name][:8]
    return result


def linears_time(m, decode_path: bool, decode, steps: int):
    """Run decode(spent) (-> tokens/s) once with the block linears' calls timed: the Decoder's products
    (model.decode_product) on the decode path; else forward hooks on every linear module and the fused calls
    (QuantLinear.fused). Returns the tokens/s, [ms, calls] per step in the linears, and the output head's ms as
    a decode step runs it, timed alone."""
    spent = [0.0, 0]                                         # seconds in the block linears' calls, their number

    def timed(fn):
        def call(*args):
            t0 = time.perf_counter()
            y = fn(*args)
            spent[:] = [spent[0] + time.perf_counter() - t0, spent[1] + 1]
            return y
        return call

    def timed_product(linears, x):
        return timed(decode_product(linears, x))
    hooks = []
    for mod_name, mod in m.named_modules():
        if decode_path:
            break
        if mod_name.startswith("layers.") and isinstance(mod, (torch.nn.Linear, model.QuantLinear)):
            hooks.append(mod.register_forward_pre_hook(lambda mod, x: setattr(mod, "_t0", time.perf_counter())))
            hooks.append(mod.register_forward_hook(lambda mod, x, y: spent.__setitem__(
                slice(None), [spent[0] + time.perf_counter() - mod._t0, spent[1] + 1])))
    fused, model.QuantLinear.fused = model.QuantLinear.fused, timed(model.QuantLinear.fused)
    decode_product, model.decode_product = model.decode_product, timed_product
    try:
        speed = decode(spent)
    finally:
        model.QuantLinear.fused, model.decode_product = fused, decode_product
        for h in hooks:
            h.remove()
    m.setup_cache(1, 1, fp16_head=True)                       # the head as a decode step runs it, timed alone
    h = torch.randn(1, 1, m.args.dim)
    head_ms = median_ms(lambda: torch.nn.functional.linear(h.half(), m.decode_head), 21)
    m.setup_cache(None, 0)
    return speed, [1e3 * spent[0] / steps, spent[1] // steps], head_ms


def asm_census() -> dict:
    """Vector instructions in the numba kernels' machine code (recompiled without the cache, which hides it)."""
    kernels.load_numba()
    lay = random_cpu_layout(40, 200)
    x = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    ng = len(lay["groups"])
    tables = kernels._tables(x, lay["groups"], 0, ng)
    lists = lay["signs"], lay["sal"], lay["const"], lay["groups"], lay["pos_bits"]
    y = np.zeros(lay["signs"].shape[0] * LANES, np.float32)
    census = {}
    for fn, args in ((kernels._tables, (x, lay["groups"], 0, ng)),
                     (kernels._gemv, (x, *tables, 0, ng, *lists, y, True)),
                     (kernels._decode_tile, (*lists, 0, np.empty((200, 3 * LANES), np.float32), True))):
        fresh = kernels.numba.njit(parallel=True, fastmath=True)(fn.py_func)
        fresh(*args)
        asm = fresh.inspect_asm(fresh.signatures[0])
        census[fn.__name__] = {reg: asm.count(reg) for reg in ("zmm", "ymm", "xmm", "vgatherdps", "vgatherq")}
    return census


def main(argv=None) -> int:
    p = cli.Parser(description="Time the mixed 1/4-bit matmul against the dense one it replaces, then decoding.")
    p.add_argument("--json", action="store_true", help="last stdout line: {\"rows\": [...], \"decode\": {...}}")
    p.add_argument("--backend", default=None, choices=["numba", "triton"], help="default: triton on CUDA, else numba")
    p.add_argument("--reps", type=int, default=50, help="calls per timing; each figure is the median of 5-7")
    p.add_argument("--shapes", default=None, help="e.g. 11008x4096,576x576 (default: all; none: decode only)")
    p.add_argument("--decode", default="out/rows/paper.safetensors,out/rows/squeeze10.safetensors",
                   help="version-1 and version-2 packed files of the embedded model for the decode tokens/s rows "
                        "(the reproduction's rows paper and squeeze10 make them; '' to skip)")
    p.add_argument("--asm", action="store_true", help="only count vector instructions in the numba kernels")
    a = p.parse_args(argv)
    if a.asm:
        print(json.dumps(asm_census()))
        return 0
    backend = a.backend or ("triton" if torch.cuda.is_available() else "numba")
    if backend == "triton" and not (torch.cuda.is_available() and kernels.triton is not None):
        p.error("--backend triton needs a CUDA GPU and the triton package")
    try:
        shapes = BENCH_SHAPES if a.shapes is None else [] if a.shapes == "none" else [
            tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    except ValueError:
        p.error(f"--shapes {a.shapes!r}: expected OUTxIN[,OUTxIN...]")
    copy = round(copy_gbps(), 2)
    if not a.json:
        print(f"memory: a copy reads {copy:.1f} GB/s on this machine")
    rows = bench(a.json, backend, a.reps, shapes, copy=copy) if shapes else []
    decode = {}
    if a.decode:
        files = {"fp": None}
        for name, path in zip(("v1", "v2"), a.decode.split(",")):
            if Path(path).exists():
                files[name] = path
            else:
                print(f"(decode row {name} skipped: {path} does not exist)")
        decode = decode_bench(files)
        if not a.json:
            print("decode, embedded model, 64 tokens: " + ", ".join(f"{k}: {v}" for k, v in decode.items()))
    if a.json:
        print(json.dumps({"rows": rows, "decode": decode, "copy_gbps": copy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
