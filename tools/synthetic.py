"""tools/synthetic.py — time squeeze10's pipeline at a real model's size, without its weights.

    python tools/synthetic.py llama2-7b --blocks 2 --json            # LLaMA-2-7B's shapes, random weights
    python tools/synthetic.py llama2-13b --blocks 1 --device cuda

Builds `--blocks` transformer blocks of the named model's real shapes (weights ~ N(0, 0.02²), norms 1),
quantizes them with random calibration token ids of the model's default calibration size, and reports the
seconds per block, the peak memory, and the time extrapolated to every block of the model.
"""
import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model  # noqa: E402
import squeeze10 as sq  # noqa: E402
from tools import cli  # noqa: E402

SHAPES = {  # real shapes: times the pipeline at scale without downloading anything
    "llama2-7b": model.ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, hidden_dim=11008),
    "llama2-13b": model.ModelArgs(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, hidden_dim=13824),
    "llama2-70b": model.ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                                  hidden_dim=28672),
}


def synthetic_model(name: str, blocks: int, seed: int) -> model.Transformer:
    """`blocks` transformer blocks of a model's real shapes, weights ~ N(0, 0.02²), norms 1; in bfloat16, as
    squeeze10.py loads a real checkpoint (each block is quantized in float32)."""
    args = replace(SHAPES[name], n_layers=blocks)
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in model.Transformer(args).state_dict().items()}
    tensors = {n: (lambda shape=shape, n=n: torch.ones(shape) if n.endswith("norm.weight")
                   else torch.randn(shape, generator=gen) * 0.02) for n, shape in shapes.items()}
    return model.build_model(args, tensors, Path(f"synthetic {name}"), dtype=torch.bfloat16)


def main(argv=None) -> int:
    p = cli.Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=SHAPES)
    p.add_argument("--blocks", type=int, default=2, help="how many blocks to build and time (default 2)")
    p.add_argument("--preset", default="squeeze10", choices=sq.PRESETS)
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default: by model size)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with the timings")
    cli.add_memory_flags(p)
    a = p.parse_args(argv)
    try:
        cli.check_positive(a, {"blocks": 1, "nsamples": 1, "seqlen": 2})
        if cli.check_device(a.device):
            raise cli.UsageError(cli.check_device(a.device))
    except cli.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    full = SHAPES[a.name]
    cal = cli.default_calibration(full)
    cal = cli.Calibration(a.nsamples or cal.nsamples, a.seqlen or cal.seqlen, a.seed)
    acts = cli.default_activations(sq, full, cal.nsamples * cal.seqlen, a.device,    # as for the whole model
                                   None if a.act_dtype == "auto" else a.act_dtype, a.offload)
    net = synthetic_model(a.name, a.blocks, a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(full.vocab_size, (cal.nsamples, cal.seqlen), generator=gen)
    cli.log(f"{a.name}, {a.blocks} of {full.n_layers} blocks, random weights; calibration {asdict(cal)}; "
            f"preset {a.preset}; device {a.device}; activations {cli.describe(acts)}")
    t0 = time.time()
    result = sq.quantize(net, tokens, sq.PRESETS[a.preset], a.device, cli.log, acts)
    seconds = time.time() - t0
    weights = [r["shape"][0] * r["shape"][1] for r in result.report]
    totals = dict(name=a.name, blocks=a.blocks, model_blocks=full.n_layers, calibration=asdict(cal),
                  quantize_seconds=round(seconds, 1), seconds_per_block=round(seconds / a.blocks, 1),
                  extrapolated_seconds=round(seconds / a.blocks * full.n_layers, 1),
                  peak_rss_mb=round(cli.peak_rss_mb()), activations=cli.describe(acts),
                  bits_per_linear_weight=dict(total=8 * sum(r["bytes"] for r in result.report) / sum(weights)))
    if a.device.startswith("cuda"):
        totals["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    cli.log(f"quantization {seconds:.1f} s for {a.blocks} blocks; extrapolated to {full.n_layers} blocks: "
            f"{totals['extrapolated_seconds']:.0f} s; peak RSS {totals['peak_rss_mb'] / 1024:.2f} GiB")
    if a.json:
        print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
