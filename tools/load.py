"""tools/load.py — load a checkpoint as eval.py would: its shape, load time and peak memory.

    python tools/load.py --ckpt llama2-7b --dtype bfloat16
    python tools/load.py                                    # the embedded SmolLM2-135M

Every format model.load_checkpoint reads (Meta, Hugging Face, GGUF, packed squeeze10 files). Then one
16-token forward pass, which touches every weight: memory-mapped ones become resident.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model  # noqa: E402
from tools import cli  # noqa: E402


def main(argv=None) -> int:
    p = cli.Parser(description="Load a checkpoint; print its shape, load time and peak memory.")
    p.add_argument("--ckpt", default=None, help="checkpoint path or name (default: the embedded SmolLM2-135M)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        m = model.load_checkpoint(a.ckpt, dtype=getattr(torch, a.dtype))
    except model.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(m.args)
    print(f"{model.num_params(m) / 1e6:.1f}M parameters, loaded in {time.time() - t0:.1f} s, "
          f"peak RSS {cli.peak_rss_mb() / 1024:.2f} GiB")
    t0 = time.time()
    with torch.inference_mode():
        m(torch.zeros(1, 16, dtype=torch.long))
    print(f"one 16-token forward pass in {time.time() - t0:.1f} s, peak RSS {cli.peak_rss_mb() / 1024:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
