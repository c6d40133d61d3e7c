"""tools/cli.py — the command-line plumbing squeeze10.py, eval.py and model.py share; nothing of the method.

One-line errors and exit code 2 for bad flags (`Parser`), SIGINT/SIGTERM as an exception so that temporary
files are removed (`interruptible`, exit 130/143), output files written atomically (`write_atomic`) after the
output path was checked before any work (`check_writable`), and what killed runs left behind cleaned up
(`remove_stale_partials`). Imports nothing of the project.
"""
import argparse
import contextlib
import glob
import json
import math
import os
import resource
import shutil
import signal
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from data import first_line  # noqa: F401  (the tools call it as cli.first_line)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr ("error: ..."), exit code 2, without the usage text."""
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised wherever the program is, so that `finally` blocks still run (a temporary file
    is removed) and main() prints one line and exits with 128 + the signal's number: 130, 143. A
    BaseException, so that no `except Exception` on the way turns it into a different error."""
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible():
    """While the block runs, SIGINT and SIGTERM raise Interrupted (main thread only: elsewhere Python cannot
    install handlers, and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_main(main, argv=None, note: str = "") -> int:
    """main(argv) under `interruptible`: a signal ends it with one line and exit code 128 + its number."""
    try:
        with interruptible():
            return main(argv)
    except Interrupted as e:
        print(f"error: interrupted by {e}{note}", file=sys.stderr)
        return 128 + e.signum


def check_device(name: str) -> str | None:
    """None if torch can put a tensor on device `name`; otherwise why not, in one line."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        return f"--device {name}: not a device torch knows ({first_line(e)})"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch build sees no CUDA device"
    try:
        torch.empty(1, device=device)
    except Exception as e:  # each backend raises its own type: RuntimeError, AssertionError, ...
        return f"--device {name}: not usable here ({first_line(e)})"
    return None


def check_seed(seed: int) -> str | None:
    if not 0 <= seed < 2**63:
        return f"--seed {seed}: must be in 0 .. 2^63 - 1"
    return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -----------------------------------------------------------------------------
# Output files: checked before the work, written atomically, nothing partial left behind

class WriteError(OSError):
    """Writing the output failed (full disk, I/O error, ...): a one-line message naming the path."""


class UsageError(ValueError):
    """A flag or --out that cannot work (an unknown device, a directory, one of the inputs, ...): one line."""


def partial_name(path: Path, pid: int | None = None) -> Path:
    """Where `path` is written before the rename: the directory `.NAME.PID.partial` beside it, so that what a
    killed run (SIGKILL, power loss) left says which output it was for and which process wrote it. A directory,
    so that a writer's own temporary files (safetensors writes `.tmpXXXXXX` first) land inside it too."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.partial")


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete what killed runs left while writing `path` (their process is gone); returns what it removed."""
    removed = []
    for f in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = f.name[len(path.name) + 2:-len(".partial")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)                   # no error: that process still runs (and may be writing)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:                    # another user's live process
            continue
        try:
            _remove(f)
            removed.append(f)
        except OSError:
            pass
    return removed


def write_atomic(path: Path, write):
    """`write(tmp)` writes the output to a path inside `partial_name(path)`; that file is flushed to disk and
    renamed onto `path`. An error, SIGINT or SIGTERM (`interruptible` makes them exceptions) removes the
    partial directory and leaves an older file at `path` as it was. Any failure is a WriteError naming
    `path` (safetensors raises its own SafetensorError, not an OSError, when the disk is full)."""
    partial = partial_name(path)
    tmp = partial / path.name
    try:
        try:
            partial.mkdir()
            write(tmp)
            with open(tmp, "rb+") as f:            # a full disk or an I/O error can surface only here
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)          # safetensors creates files 0600; give the usual permissions
            os.replace(tmp, path)
        except Exception as e:
            if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
                raise
            reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            raise WriteError(f"{path}: cannot write: {reason}") from None
    finally:
        _remove(partial)


def write_text_atomic(path: Path, text: str):
    """A small text file (a result, a table) through `write_atomic`; creates its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(text))


FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
              (stat.S_ISSOCK, "a socket"))


def input_files(*paths) -> list[Path]:
    """Every file a run reads (a directory: the files in it), which --out must not be."""
    files = []
    for p in paths:
        if p is not None and Path(p).is_dir():
            files += [f for f in Path(p).iterdir() if f.is_file()]
        elif p is not None and Path(p).exists():
            files.append(Path(p))
    return files


def check_writable(path: Path, inputs=()) -> Path:
    """Fail before hours of work, not after (UsageError): the output must be a regular file or a new name in
    a directory that accepts files, and not one of the `inputs` (the same inode, or the same path once
    resolved). A symlink is followed: its target is written. Removes what killed runs left there. Returns the
    path to write."""
    target = path.resolve() if path.is_symlink() else path
    via = f" (through the symlink {path})" if target != path else ""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory; --out needs a file name")
    for test, kind in FILE_KINDS:
        if st is not None and test(st.st_mode):
            raise UsageError(f"{target}: is {kind}{via}; --out must be a regular file or a new file name")
    for inp in inputs:
        same = os.path.realpath(inp) == os.path.realpath(target)
        if st is not None and not same:
            try:
                same = os.path.samestat(st, os.stat(inp))
            except OSError:
                pass
        if same:
            raise UsageError(f"{path}: is the input {inp}; writing there would destroy it")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: cannot write: directory {parent} does not exist")
    remove_stale_partials(target)
    probe = partial_name(target)
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    return target


def int_or(word: str):
    """An argparse type: an integer, or `word` (e.g. `--mid-bits none`)."""
    def parse(text: str):
        if text == word:
            return word
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor {word}") from None
    return parse


# -----------------------------------------------------------------------------
# squeeze10.py's command line: flags, every input checked before any work, the atomic write, the report

def quantize_parser(sq) -> Parser:
    """The flags of `python squeeze10.py`: the run's, then one per field of sq.Settings (None: the preset's)."""
    p = Parser(description=sq.__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint directory, .gguf, or name (default: embedded SmolLM2)")
    p.add_argument("--preset", default="squeeze10", help=f"one of {', '.join(sq.PRESETS)} (default squeeze10)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default: by model size)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--calib", nargs="+", default=["embedded"], metavar="SOURCE",
                   help="embedded (default: the embedded c4.utf8) | c4 PATH | wikitext2 PATH | text PATH")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: the checkpoint's own)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="packed file (default out/NAME.PRESET.safetensors)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with the report")
    add_memory_flags(p)
    s = p.add_argument_group("settings (each overrides the preset's field)")
    s.add_argument("--salient", type=float, help="fraction kept at --high-bits, in [0, 1]")
    s.add_argument("--high-bits", type=int, help="salient weights' bits, 2..8")
    s.add_argument("--mid-bits", type=int_or("none"), help="stage 1 bits, 2..8, or none (no stage 1)")
    s.add_argument("--lam", type=float, help="PBAR's λ on the normalised terms")
    s.add_argument("--no-pbar", dest="pbar", action="store_false", default=None, help="Hessian-only salience")
    s.add_argument("--fias", help="target | input | off")
    s.add_argument("--stage3-from", help="mid (stage 3 re-quantizes W_mid) | fp (stage 1 only ranks)")
    s.add_argument("--structure", help="columns (version 2) | groups (version 1: k salient per row-group)")
    s.add_argument("--block-rows", type=int_or("layer"),
                   help="columns: rows sharing one set of salient columns, or layer (one set per layer)")
    s.add_argument("--scales", help="fp8 | fp16 (fp8: columns only)")
    s.add_argument("--column-scale", action=argparse.BooleanOptionalAction, default=None,
                   help="columns: binary weights μ ± α·c_j, one c per input column (ARB-LLM's RC)")
    s.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="the salient grid's range by a clip search (else min–max)")
    s.add_argument("--refine", type=int, help="rounds of alternating refinement after stage 3 (0: none)")
    return p


def add_memory_flags(p: argparse.ArgumentParser):
    p.add_argument("--act-dtype", default="auto", choices=("auto", *ACT_DTYPES),
                   help="the activations between uses: auto (fp32 under 1 B block weights, else fp16)")
    p.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None,
                   help="on a GPU, hold the activations in CPU memory (default: when they would not fit)")


def check_positive(a, flags: dict):
    """Each flag (name -> least value) that was given must be at least its least value."""
    for flag, least in flags.items():
        value = getattr(a, flag)
        if value is not None and value < least:
            raise UsageError(f"--{flag} {value}: must be at least {least}")


SETTINGS_CHOICES = dict(fias=("target", "input", "off"), stage3_from=("mid", "fp"),
                        structure=("columns", "groups"), scales=("fp8", "fp16"))


def check_settings(sq, s):
    """Every field of squeeze10's Settings s in its range: a SettingsError naming the flag otherwise."""
    for name, allowed in SETTINGS_CHOICES.items():
        value = getattr(s, name)
        if value not in allowed:
            raise sq.SettingsError(f"--{name.replace('_', '-')} {value}: must be one of {', '.join(allowed)}")
    if s.mid_bits is not None and not 2 <= s.mid_bits <= 8:
        raise sq.SettingsError(f"--mid-bits {s.mid_bits}: must be 2..8, or none (no stage 1)")
    if not 0 <= s.salient <= 1:
        raise sq.SettingsError(f"--salient {s.salient}: must be in [0, 1] (0: all binary, 1: no binary part)")
    if not 2 <= s.high_bits <= 8:
        raise sq.SettingsError(f"--high-bits {s.high_bits}: must be 2..8")
    if not (s.lam >= 0 and math.isfinite(s.lam)):
        raise sq.SettingsError(f"--lam {s.lam}: must be a finite number >= 0")
    if s.nsamples is not None and s.nsamples < 1:
        raise sq.SettingsError(f"nsamples {s.nsamples}: must be at least 1")
    if s.refine < 0:
        raise sq.SettingsError(f"--refine {s.refine}: must be at least 0 (0: GPTQ's result as it is)")
    if s.block_rows is not None and s.block_rows < 1:
        raise sq.SettingsError(f"--block-rows {s.block_rows}: must be at least 1, or layer (one set per layer)")
    only_columns = "only the columns layout (--structure columns, 0 < --salient < 1)"
    if s.column_scale and sq.layout_of(s) != "columns":
        raise sq.SettingsError(f"--column-scale: {only_columns}")
    if s.scales == "fp8" and sq.layout_of(s) != "columns":
        raise sq.SettingsError(f"--scales fp8: {only_columns} stores fp8")


def settings_from_args(sq, preset: str, given: dict):
    """The preset, with each field given on the command line replaced (None: not given; "none" for
    mid_bits and "layer" for block_rows mean None)."""
    if preset not in sq.PRESETS:
        raise sq.SettingsError(f"--preset {preset}: unknown; choose one of {', '.join(sq.PRESETS)}")
    given = {k: None if v in ("none", "layer") else v for k, v in given.items() if v is not None}
    s = replace(sq.PRESETS[preset], **given)
    check_settings(sq, s)
    return s


# Run choices: the calibration's size, where and how the activations wait

@dataclass
class Calibration:
    nsamples: int
    seqlen: int
    seed: int = 0


def small_model(args) -> bool:
    """Under 1 B block weights (the embedded 135M): the run choices below differ for such models."""
    return (4 * args.dim * args.dim + 3 * args.dim * args.hidden_dim) * args.n_layers < 1e9


def default_calibration(args, s=None) -> Calibration:
    """GPTQ's 128 × 2048 for real models; for small ones (the embedded 135M on 2 CPU cores) windows of 512
    tokens, so that a run takes minutes: 128 of them where the settings ask (the default preset: its Hessians
    of 1536 inputs then see 42 tokens per input, not 10), else 32 (the paper preset and the baselines)."""
    if small_model(args):
        return Calibration(nsamples=(s.nsamples if s is not None else None) or 32, seqlen=512)
    return Calibration(nsamples=128, seqlen=2048)


ACT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_activations(sq, args, tokens: int, device: str, dtype: str | None = None,
                        offload: bool | None = None):
    """float32 for small models (the embedded one keeps its exact numerics), float16 from 1 B block weights;
    on a GPU, held in CPU memory (offload) when what the two streams hold would take more than half the free
    device memory: x and m each in float32, x or h each in 16 bits (squeeze10.block_steps)."""
    dt = ACT_DTYPES[dtype or ("fp32" if small_model(args) else "fp16")]
    if offload is None:
        need = (4 if dt == torch.float32 else 2) * tokens * args.dim * dt.itemsize
        offload = device.startswith("cuda") and need > torch.cuda.mem_get_info(torch.device(device))[0] / 2
    return sq.Activations(dt, device, "cpu" if offload else device)


class Job:
    """One quantization run, prepared: everything that can fail on bad input fails in `prepare`, before any
    quantization: the flags, the output path, the model, the tokenizer and the calibration text."""

    def __init__(self, sq, a):
        import data
        import model
        given = {f: getattr(a, f) for f in sq.Settings.__dataclass_fields__ if hasattr(a, f)}
        self.settings = settings_from_args(sq, a.preset, given)
        for problem in (check_device(a.device), check_seed(a.seed)):
            if problem:
                raise UsageError(problem)
        check_positive(a, {"nsamples": 1, "seqlen": 2})
        source, *rest = a.calib
        if (source == "embedded") != (not rest) or len(rest) > 1:
            raise UsageError(f"--calib {' '.join(a.calib)}: expected 'embedded' or 'c4|wikitext2|text PATH'")
        ckpt = model.resolve_checkpoint(a.ckpt)
        if model.checkpoint_format(ckpt) == "squeeze10":
            raise UsageError(f"{ckpt}: already a packed squeeze10 file; quantize the full-precision checkpoint")
        self.name = (ckpt.name if ckpt.is_dir() else ckpt.name.split(".")[0]) or "model"
        out = Path(a.out) if a.out else Path("out") / f"{self.name}.{a.preset}.safetensors"
        if not a.out:
            out.parent.mkdir(exist_ok=True)
        self.out = check_writable(out, input_files(ckpt, a.tokenizer, rest[0] if rest else None))
        # bf16 keeps a 7B model in 13 GB; each block is quantized in fp32 on the device
        self.net = model.load_checkpoint(ckpt, dtype=torch.float32 if ckpt.suffix == ".gguf" else torch.bfloat16)
        cal = default_calibration(self.net.args, self.settings)
        cal = Calibration(a.nsamples or cal.nsamples, a.seqlen or cal.seqlen, a.seed)
        if cal.seqlen > self.net.args.max_seq_len:   # positions the model never saw: its activations mean nothing
            raise UsageError(f"--seqlen {cal.seqlen}: longer than the model's context of "
                              f"{self.net.args.max_seq_len} tokens (its config's context length)")
        tokenizer_ref = str(Path(a.tokenizer or ckpt).resolve()) if a.tokenizer or a.ckpt else "embedded"
        tokenizer = data.load_tokenizer(ckpt if tokenizer_ref == "embedded" else tokenizer_ref)
        self.tokens = data.calibration_set(tokenizer, source, rest[0] if rest else None, cal.nsamples, cal.seqlen,
                                           cal.seed)
        if self.tokens.max() >= self.net.args.vocab_size:
            raise UsageError(f"{tokenizer_ref}: the tokenizer produces id {int(self.tokens.max())}, but the model "
                              f"has {self.net.args.vocab_size} tokens")
        self.acts = default_activations(sq, self.net.args, cal.nsamples * cal.seqlen, a.device,
                                        None if a.act_dtype == "auto" else a.act_dtype, a.offload)
        self.info = dict(preset=a.preset, settings=asdict(self.settings), calibration=asdict(cal),
                         calib_source=" ".join(map(str, a.calib)),
                         source="embedded" if a.ckpt is None else str(ckpt.resolve()), tokenizer=tokenizer_ref)


def describe(acts) -> str:
    """'float16 on cpu' for the report."""
    return f"{str(acts.dtype).removeprefix('torch.')} on {acts.held_on}"


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def quantize_command(sq, argv=None) -> int:
    """`python squeeze10.py`: prepare a Job (exit 2 on any bad input), sq.quantize, write the packed file
    atomically (sq.packed_file), print the bits report; with --json a last line holding the whole report."""
    import data
    import model
    a = quantize_parser(sq).parse_args(argv)
    t_start = time.time()
    try:
        job = Job(sq, a)
    except (sq.SettingsError, UsageError, model.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s, net, tokens, out, info = job.settings, job.net, job.tokens, job.out, job.info
    log(f"{job.name}: {model.num_params(net) / 1e6:.1f}M parameters, {net.args.n_layers} blocks; "
        f"preset {a.preset}: " + ", ".join(f"{k}={v}" for k, v in asdict(s).items()))
    log(f"calibration: {tokens.shape[0]} x {tokens.shape[1]} tokens from {info['calib_source']}, seed {a.seed}; "
        f"device {a.device}; activations {describe(job.acts)}; writing {out}")
    t_quant = time.time()
    try:
        result = sq.quantize(net, tokens, s, a.device, log, job.acts)
    except sq.QuantizationError as e:
        print(f"error: {e}; no file written", file=sys.stderr)
        return 2
    quant_seconds = time.time() - t_quant
    info["report"] = [{k: v for k, v in r.items() if k != "seconds"} for r in result.report]  # no timings: same bytes
    retries = list(result.damping_retries)
    if retries:
        info["damping_retries"] = retries
    for r in retries:
        log(f"{r['layer']} ({r['linears']}): a Hessian ({r['size']} inputs) needed {r['factor']}x the damping "
            "to factorise")
    try:
        tensors, metadata = sq.packed_file(net, result.packed, result.specs, info)
        write_atomic(out, lambda tmp: save_safetensors(tensors, tmp, metadata))
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except sq.SettingsError as e:
        print(f"error: {out}: {e}", file=sys.stderr)
        return 2
    totals = summarize(result.report, out.stat().st_size, model.num_params(net))
    totals.update(quantize_seconds=round(quant_seconds, 1), wall_seconds=round(time.time() - t_start, 1),
                  seconds_per_block=round(quant_seconds / net.args.n_layers, 2), peak_rss_mb=round(peak_rss_mb()),
                  activations=describe(job.acts))
    if a.device.startswith("cuda"):
        totals["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print_report(result.report, totals, retries)
    print(f"wrote {out} in {totals['wall_seconds']:.1f} s (quantization {quant_seconds:.1f} s), "
          f"peak RSS {totals['peak_rss_mb'] / 1024:.2f} GiB")
    if a.json:
        print(json.dumps(dict(out=str(out), preset=a.preset, settings=asdict(s), calibration=info["calibration"],
                              totals=totals, layers=result.report, damping_retries=retries)))
    return 0


def save_safetensors(tensors: dict, path: Path, metadata: dict):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)


def summarize(report: list, file_bytes: int, n_params: int) -> dict:
    """Whole-model totals: bits per linear weight (weighted by size) and the file against its 16-bit size."""
    weights = [r["shape"][0] * r["shape"][1] for r in report]
    total_w = sum(weights)
    mean = {k: sum(w * r["bits"][k] for w, r in zip(weights, report)) / total_w
            for k in ("payload", "index", "scales")}
    mean["total"] = 8 * sum(r["bytes"] for r in report) / total_w           # exact: from the bytes
    return dict(linear_weights=total_w, bits_per_linear_weight={k: round(v, 4) for k, v in mean.items()},
                file_bytes=file_bytes, fp16_bytes=2 * n_params, compression=round(2 * n_params / file_bytes, 3),
                rel_error_mean=round(sum(r["rel_error"] for r in report) / len(report), 5))


def print_report(report: list, totals: dict, retries: list):
    out = sys.stdout
    print(f"{'linear':32s} {'shape':>11s} {'salient':>7s} {'payload':>7s} {'index':>6s} {'scales':>6s} "
          f"{'total':>6s} {'rel err':>8s} {'s':>6s}", file=out)
    for r in report:
        b = r["bits"]
        print(f"{r['name']:32s} {r['shape'][0]:>5d}x{r['shape'][1]:<5d} {r['salient']:7.3f} {b['payload']:7.3f} "
              f"{b['index']:6.3f} {b['scales']:6.3f} {b['total']:6.3f} {r['rel_error']:8.4f} {r['seconds']:6.2f}"
              f" ({r['group']})", file=out)
    b = totals["bits_per_linear_weight"]
    print(f"bits per linear weight: payload {b['payload']:.3f} + index {b['index']:.3f} + scales "
          f"{b['scales']:.3f} = {b['total']:.3f} (from the packed bytes)", file=out)
    print(f"file {totals['file_bytes'] / 2**20:.1f} MiB against {totals['fp16_bytes'] / 2**20:.1f} MiB at 16 bits "
          f"({totals['compression']:.2f}x smaller)", file=out)
    for r in retries:
        print(f"damping: {r['layer']}, a {r['size']}-input Hessian factorised only with {r['factor']}x DAMP "
              f"({r['added']:.3g} added to its diagonal)", file=out)
