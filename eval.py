"""eval.py — perplexity of a checkpoint, by GPTQ's protocol.

    python eval.py                                   # embedded SmolLM2-135M on embedded Wikipedia, 16 x 2048
    python eval.py --ckpt llama2-7b --data wikitext2 ~/data/wikitext-2-raw/wiki.test.raw --dtype bfloat16
    python eval.py --ckpt llama2-7b --data c4 ~/data/c4        # c4-validation.00000-of-00008.json.gz inside
    python eval.py --text my_corpus.txt --json

The protocol (Frantar et al., GPTQ, 2022, as every PTQ paper since reports it): tokenize the whole text once
(one BOS at the very start when the tokenizer's model uses one: LLaMA does, SmolLM2 does not), cut it into
non-overlapping windows of `seqlen` tokens, score positions 1..T-1 of each window given the positions before
it, and report ppl = exp(mean negative log-likelihood over all scored tokens).
"""
import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

import data
import model as llama

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
        nll = F.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="sum")
        total_nll += nll.item()
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
    if kind in ("wikitext2", "c4") and len(rest) == 1:
        read = data.wikitext2_text if kind == "wikitext2" else data.c4_eval_text
        return read(rest[0]), f"{kind} {rest[0]}"
    raise data.DataError(f"--data {' '.join(args.data)}: expected 'embedded', 'wikitext2 PATH' or 'c4 PATH'")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint: directory, .gguf, or name under $SQUEEZE10_MODELS "
                                                "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or .gguf (default: the checkpoint's own)")
    p.add_argument("--data", nargs="+", default=["embedded"], metavar="SOURCE",
                   help="embedded (default) | wikitext2 PATH (wiki.test.raw or its directory) | "
                        "c4 PATH (c4-validation.00000-of-00008.json.gz or its directory)")
    p.add_argument("--text", default=None, help="evaluate on this UTF-8 text file instead")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--windows", type=int, default=None,
                   help="evaluate the first N windows (default: 16 embedded, 256 c4, else all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and activations (7B on CPU: bfloat16)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with the results")
    args = p.parse_args(argv)
    if args.seqlen < 2:
        p.error("--seqlen must be at least 2")
    if args.windows is not None and args.windows < 1:
        p.error("--windows must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch build sees no CUDA device")

    t0 = time.time()
    try:
        ckpt = llama.resolve_checkpoint(args.ckpt)
        model = llama.load_checkpoint(ckpt, device=args.device, dtype=DTYPES[args.dtype])
        load_seconds = time.time() - t0
        tokenizer = data.load_tokenizer(args.tokenizer or llama.tokenizer_source(ckpt))
        text, text_name = eval_text(args)
        ids = tokenizer.encode(text, bos=tokenizer.add_bos)
        if ids and max(ids) >= model.args.vocab_size:
            raise data.DataError(f"{args.tokenizer or ckpt}: the tokenizer produces id {max(ids)}, but the model's "
                                 f"vocabulary has {model.args.vocab_size} tokens")
        windows = args.windows or (None if args.text else DEFAULT_WINDOWS.get(args.data[0]))
        batches = make_windows(ids, args.seqlen, windows, source=text_name)
    except (llama.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{ckpt}: {llama.num_params(model) / 1e6:.1f}M parameters, loaded in {load_seconds:.1f} s; "
          f"{text_name}: {len(ids)} tokens, {len(batches)} windows x {args.seqlen}", file=sys.stderr)

    t1 = time.time()
    result = perplexity(model, batches, args.device, Progress("window"))
    seconds = time.time() - t1
    report = {"ckpt": str(ckpt), "data": text_name, "ppl": round(result["ppl"], 4), "tokens": result["tokens"],
              "windows": len(batches), "seqlen": args.seqlen, "seconds": round(seconds, 2),
              "load_seconds": round(load_seconds, 2), "total_seconds": round(time.time() - t0, 2),
              "peak_rss_mb": round(peak_rss_mb()), "device": args.device, "dtype": args.dtype}
    print(f"perplexity {result['ppl']:.4f} over {result['tokens']} tokens ({len(batches)} x {args.seqlen}) "
          f"in {seconds:.1f} s")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
