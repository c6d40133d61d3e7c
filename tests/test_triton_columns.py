"""The Triton kernel for version 2's "columns" layout against a float64 dense product; pack_columns and
unpack_columns against each other.

Random version-2 linears are made as codes, a mask shared by blocks of rows and parameters already rounded to
their stored precision, and written by kernels.pack_columns, the packer squeeze10.py uses, so every row-block
marks exactly k columns. The kernel runs here under TRITON_INTERPRET=1 (set in conftest.py); shapes are small
because the interpreter is slow.
"""
import pytest
import torch

import kernels
from conftest import on_triton_device

# out, in, group_size, block_rows (None: the whole layer), k, high_bits, scales, column_scale
CONFIGS = [
    (70, 300, 128, 32, 60, 4, "fp16", False),    # R = 32 does not divide 70; last row-group 44 wide
    (70, 300, 24, 32, 61, 3, "fp8", True),       # 13 row-groups, the last 12 wide; k, in − k not multiples of 8
    (70, 203, 64, None, 37, 2, "fp8", False),    # R = out = 70; in not a multiple of 8
    (33, 150, 128, 5, 29, 4, "fp16", True),      # small R: programs with idle rows
    (40, 130, 32, 32, 27, 3, "fp16", False),     # 3-bit codes and zeros straddling bytes, fp16
    (24, 90, 40, 8, 19, 8, "fp8", True),         # 8-bit codes; R = 8 divides out
    (20, 300, 256, 16, 55, 4, "fp8", True),      # a row-group of two 128-column chunks, then one of 44
]
UNIT_EXP = -10                                   # fp8 parameters in units of 2^-10


def stored(p: torch.Tensor, scales: str) -> torch.Tensor:
    """p rounded to its stored precision: fp16, or fp8 e4m3 in units of 2^UNIT_EXP (float32 again)."""
    if scales == "fp16":
        return p.half().float()
    return (p / 2.0 ** UNIT_EXP).to(torch.float8_e4m3fn).float() * 2.0 ** UNIT_EXP


def random_record(out, n_in, group_size, block_rows, k, high_bits, scales, column_scale, seed=0):
    """spec, and pack_columns' arguments: codes, mask, mu, alpha, scale, zero, colscale."""
    g = torch.Generator().manual_seed(seed)
    R = block_rows or out
    blocks = -(-out // R)
    first = torch.rand(blocks, n_in, generator=g).argsort(1) < k           # k salient columns per block
    mask = first.repeat_interleave(R, 0)[:out]
    signs = torch.randint(0, 2, (out, n_in), generator=g)
    grid = torch.randint(0, 2 ** high_bits, (out, n_in), generator=g)
    ng = len(kernels.group_widths(n_in, group_size))
    mu = stored(torch.randn(out, ng, generator=g) * 0.01, scales)
    alpha = stored(torch.rand(out, ng, generator=g) * 0.05 + 1e-3, scales)
    scale = stored(torch.rand(out, ng, generator=g) * 0.01 + 1e-3, scales)
    zero = torch.randint(0, 2 ** high_bits, (out, ng), generator=g)
    spec = dict(shape=[out, n_in], group_size=group_size, high_bits=high_bits, layout=kernels.COLUMNS,
                block_rows=R, k=k, scales=scales)
    if scales == "fp8":
        spec["unit_exp"] = UNIT_EXP
    colscale = None
    if column_scale:
        spec["column_scale"] = True
        colscale = (0.5 + torch.rand(n_in, generator=g)).to(kernels.SCALE_DTYPES[scales]).float()
    return spec, (torch.where(mask, grid, signs), mask, mu, alpha, scale, zero, colscale)


def random_columns_linear(*config, seed=0):
    spec, args = random_record(*config, seed=seed)
    tensors = kernels.pack_columns(spec, *args)
    codes, mask, mu, alpha, scale, zero, colscale = args
    meant = kernels.dequantize_codes(codes, mask, mu, alpha, scale, zero, colscale, group_size=spec["group_size"])
    assert torch.equal(kernels.dequantize(tensors, spec), meant)   # the packing is what we meant
    return tensors, spec


def rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c[0]}x{c[1]}-G{c[2]}-R{c[3]}-k{c[4]}-hb{c[5]}-{c[6]}"
                                                  f"{'-colscale' if c[7] else ''}" for c in CONFIGS])
def test_the_columns_kernel_matches_a_float64_dense_product(config):
    t, spec = random_columns_linear(*config)
    W = kernels.dequantize_columns(t, spec).double()
    table = kernels.columns_gpu_table(t, spec)
    # batch 1, 3: the broadcast path; 17: tl.dot, two M tiles. splits None: these small shapes get one row-group
    # a program; 1 and 2: a program walks many, carrying its count of salient columns across them
    for batch, splits in ((1, None), (3, 1), (17, 2)):
        x = torch.randn(batch, spec["shape"][1], generator=torch.Generator().manual_seed(batch))
        y = on_triton_device(kernels.triton_matmul_columns, x, t, spec, table, splits=splits)
        assert y.shape == (batch, spec["shape"][0]) and y.dtype == torch.float32
        assert rel_err(y, x.double() @ W.T) < 1e-5, (config, batch, splits)


@pytest.mark.parametrize("splits", [1, 2, 100])
def test_every_split_of_the_row_groups_gives_the_same_product(splits):
    t, spec = random_columns_linear(70, 300, 24, 32, 61, 4, "fp8", True, seed=1)   # 13 row-groups
    W = kernels.dequantize_columns(t, spec).double()
    x = torch.randn(2, 300, generator=torch.Generator().manual_seed(0))
    y = on_triton_device(kernels.triton_matmul_columns, x, t, spec, splits=splits)
    assert rel_err(y, x.double() @ W.T) < 1e-5


def test_the_table_counts_salient_columns_left_of_each_row_group():
    t, spec = random_columns_linear(70, 300, 128, 32, 60, 4, "fp16", False)
    bitmap = kernels.unpack_bits(t["columns"], 1, 300)      # (3 blocks, 300)
    table = kernels.columns_gpu_table(t, spec)
    assert table.dtype == torch.int32 and table.shape == (3, 3)
    for b in range(3):
        for g, g0 in enumerate((0, 128, 256)):
            assert int(table[b, g]) == int(bitmap[b, :g0].sum())


def test_batched_inputs_keep_their_leading_dimensions():
    t, spec = random_columns_linear(33, 150, 128, 5, 29, 4, "fp16", True)
    x = torch.randn(2, 3, 150, generator=torch.Generator().manual_seed(4))
    y = on_triton_device(kernels.triton_matmul_columns, x, t, spec)
    ref = x.double() @ kernels.dequantize_columns(t, spec).double().T
    assert y.shape == (2, 3, 33) and rel_err(y, ref) < 1e-5
    y16 = on_triton_device(kernels.triton_matmul_columns, x.half(), t, spec)                # y in x's dtype, summed in fp32
    ref16 = x.half().double() @ kernels.dequantize_columns(t, spec).double().T
    assert y16.dtype == torch.float16 and rel_err(y16, ref16) < 1e-3      # fp16's rounding of y


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_unpack_columns_returns_what_pack_columns_was_given(config):
    spec, args = random_record(*config)
    back = kernels.unpack_columns(kernels.pack_columns(spec, *args), spec)
    for name, given, got in zip(("codes", "mask", "mu", "alpha", "scale", "zero", "colscale"), args, back):
        assert (given is None and got is None) or torch.equal(got, given.to(got.dtype)), name


def test_bad_inputs_are_named_in_one_line():
    t, spec = random_columns_linear(40, 130, 32, 32, 27, 3, "fp16", False)
    with pytest.raises(ValueError, match="x has 129 features, the weight takes 130"):
        kernels.triton_matmul_columns(torch.randn(1, 129), t, spec)
    t["columns"][1, 0] ^= 1                                  # block 1 now marks 26 or 28 columns
    with pytest.raises(ValueError, match="row-block 1 marks 2[68] salient columns, expected 27"):
        kernels.columns_gpu_table(t, spec)
