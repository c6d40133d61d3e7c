"""tools/same_bytes.py — do two packed files hold the same tensors, byte for byte? (A refactor's proof.)

    python tools/same_bytes.py before.safetensors after.safetensors

Compares every tensor's dtype, shape and bytes, and names the metadata fields that differ (settings, timings
and the like may; the tensors may not). Exit 0 when every tensor is identical, 1 otherwise, 2 on bad input.
"""
import json
import sys
from pathlib import Path

from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from tools import cli  # noqa: E402


def compare(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(tensors that differ or exist in one file only, metadata fields of kernels.FORMAT that differ)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        names = set(fa.keys()) | set(fb.keys())
        differ = sorted(n for n in names if n not in fa.keys() or n not in fb.keys()
                        or kernels.tensor_checksum(fa.get_tensor(n)) != kernels.tensor_checksum(fb.get_tensor(n))
                        or fa.get_tensor(n).dtype != fb.get_tensor(n).dtype
                        or fa.get_tensor(n).shape != fb.get_tensor(n).shape)
        ma = json.loads((fa.metadata() or {}).get(kernels.FORMAT, "{}"))
        mb = json.loads((fb.metadata() or {}).get(kernels.FORMAT, "{}"))
    return differ, sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))


def main(argv=None) -> int:
    p = cli.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    a = p.parse_args(argv)
    try:
        differ, meta = compare(a.a, a.b)
    except Exception as e:
        print(f"error: {a.a} or {a.b}: not a readable safetensors file ({cli.first_line(e)})", file=sys.stderr)
        return 2
    print(f"{len(differ)} tensors differ" + (f": {', '.join(differ[:8])}" if differ else "; all identical")
          + f"; metadata fields that differ: {', '.join(meta) or 'none'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
