"""Write a checkpoint with LLaMA-2's real shapes and random weights, to measure loading at real size.

    python tests/synthetic_checkpoint.py /tmp/llama2-7b-meta --size 7b --layout meta   # 13.5 GB, bf16
    python tools/load.py --ckpt /tmp/llama2-7b-meta --dtype bfloat16                   # time and peak memory

No real weights are needed: loading cost depends on shapes, dtypes and layout only.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model as llama  # noqa: E402

SIZES = {  # Meta's params.json of LLaMA-2
    "7b": dict(dim=4096, n_layers=32, n_heads=32, multiple_of=256, norm_eps=1e-5, vocab_size=-1),
    "13b": dict(dim=5120, n_layers=40, n_heads=40, multiple_of=256, norm_eps=1e-5, vocab_size=-1),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="7b", choices=SIZES)
    p.add_argument("--layout", default="meta", choices=["meta", "hf"])
    a = p.parse_args()
    params = SIZES[a.size]
    args = llama.ModelArgs(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
                           vocab_size=32000, hidden_dim=llama.meta_hidden_dim(params["dim"], params["multiple_of"]))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in llama.Transformer(args).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    a.out.mkdir(parents=True, exist_ok=True)
    if a.layout == "meta":
        (a.out / "params.json").write_text(json.dumps(params))
        torch.save(state, a.out / "consolidated.00.pth")
    else:
        from safetensors.torch import save_file
        # random weights: no q/k permutation to apply, only HF's names
        to_hf = {ours.format(i): hf.format(i) for hf, ours in llama.HF_NAMES.items() for i in range(args.n_layers)}
        hf = {to_hf[k]: v for k, v in state.items()}
        config = dict(model_type="llama", hidden_size=args.dim, num_hidden_layers=args.n_layers,
                      num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
                      intermediate_size=args.hidden_dim, vocab_size=args.vocab_size, rms_norm_eps=1e-5)
        (a.out / "config.json").write_text(json.dumps(config))
        keys = sorted(hf)
        half = len(keys) // 2
        weight_map = {}
        for i, part in enumerate((keys[:half], keys[half:])):
            file = f"model-{i + 1:05d}-of-00002.safetensors"
            save_file({k: hf[k] for k in part}, str(a.out / file))
            weight_map.update({k: file for k in part})
        (a.out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    print(f"wrote {a.out} ({sum(t.numel() for t in state.values()) / 1e9:.2f}B parameters, bf16, {a.layout})")


if __name__ == "__main__":
    main()
