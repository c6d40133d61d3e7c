"""llama.cpp's tensor types through the GGUF loader, and the bits per linear weight of a GGUF file.

Each block layout is decoded here by hand, one weight at a time, from llama.cpp's description of it (the
block structs of ggml-common.h and the reference dequantize_row_* loops of ggml-quants.c): random bytes,
with sane scales, go into a GGUF file, and the weights load_checkpoint reads must equal the hand decoding.
The lattice types (IQ1/IQ2/IQ3) index tables of 256 to 2048 points: those come from the gguf package, and
a few of their entries are checked against llama.cpp's own table. Types the package can also quantize
(TQ1_0, TQ2_0, MXFP4) are written with gguf.quants.quantize from values they represent exactly.
"""
import numpy as np
import pytest

from conftest import TINY, write_gguf
import model as llama

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# the 256-value blocks (K and IQ types) need rows of a multiple of 256 weights
WIDE = llama.ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, hidden_dim=256,
                       max_seq_len=64)
ROWS = 256  # rows of the tensor under test: blk.0.attn_q.weight, 256 x 256
DISTINCT = 37  # random blocks decoded by hand, repeated to fill it (a prime: no row sees the same sequence)

IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # kvalues_iq4nl
FP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)  # e2m1 values, doubled (kvalues_fp4)


def f16(b: bytes, at: int) -> float:
    return float(np.frombuffer(b, np.float16, 1, at)[0])


def u16(b: bytes, at: int) -> int:
    return int.from_bytes(b[at:at + 2], "little")


def u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little")


def nibble(b: bytes, half_size: int, r: int) -> int:
    """Weight r of a run packed two per byte: the first half in the low nibbles, the second in the high."""
    return b[r] & 15 if r < half_size else b[r - half_size] >> 4


def sign_byte(seven_bits: int) -> int:
    """llama.cpp's ksigns_iq2xs: 7 sign bits stored, the 8th chosen to make the number of minus signs even."""
    return seven_bits | (bin(seven_bits).count("1") % 2) << 7


def flip(signs: int, j: int) -> int:
    return -1 if signs >> j & 1 else 1


def grid(qtype) -> np.ndarray:
    """The lattice of an IQ type, one row per point, as the gguf package holds it."""
    cls = {Q.IQ2_XXS: gguf.quants.IQ2_XXS, Q.IQ2_XS: gguf.quants.IQ2_XS, Q.IQ2_S: gguf.quants.IQ2_S,
           Q.IQ3_XXS: gguf.quants.IQ3_XXS, Q.IQ3_S: gguf.quants.IQ3_S, Q.IQ1_S: gguf.quants.IQ1_S}[qtype]
    cls.init_grid()
    return cls.grid.reshape(cls.grid_shape)


# -----------------------------------------------------------------------------
# One block's weights, decoded by hand (b: the block's bytes)

def q2_k(b):  # scales[16] | qs[64] | d | dmin: 16 groups of 16, w = d*sc*q - dmin*m, 2-bit q
    d, dmin, out = f16(b, 80), f16(b, 82), []
    for e in range(256):
        half, j, g, lo = e // 128, e % 128 // 32, e % 32 // 16, e % 16
        sc = b[8 * half + 2 * j + g]
        q = b[16 + 32 * half + 16 * g + lo] >> 2 * j & 3
        out.append(d * (sc & 15) * q - dmin * (sc >> 4))
    return out


def q3_k(b):  # hmask[32] | qs[64] | scales[12] | d: 16 groups of 16, w = d*(s-32)*q, q = 2 low bits + high bit - 4
    d, sc, out = f16(b, 108), b[96:108], []
    for e in range(256):
        half, j, g, lo = e // 128, e % 128 // 32, e % 32 // 16, e % 16
        s = 8 * half + 2 * j + g   # 6-bit scale: low 4 bits in bytes 0-7, high 2 bits in bytes 8-11
        scale = (sc[s % 8] >> 4 * (s // 8) & 15) | (sc[8 + s % 4] >> 2 * (s // 4) & 3) << 4
        q = b[32 + 32 * half + 16 * g + lo] >> 2 * j & 3
        high = b[16 * g + lo] >> (4 * half + j) & 1
        out.append(d * (scale - 32) * (q - (0 if high else 4)))
    return out


def tq2_0(b):  # qs[64] | d: w = d*(q-1), 2-bit q; byte m of each 32 holds weights m, m+32, m+64, m+96
    d = f16(b, 64)
    return [d * ((b[32 * (e // 128) + e % 32] >> 2 * (e % 128 // 32) & 3) - 1) for e in range(256)]


def trit(byte: int, n: int) -> int:
    """Digit n of a byte read as a base-3 fraction (llama.cpp stores 5 ternary digits as q = ceil(v*256/243))."""
    return (byte * 3 ** n % 256) * 3 >> 8


def tq1_0(b):  # qs[48] | qh[4] | d: w = d*(t-1), t a ternary digit; 5 digits per qs byte, 4 per qh byte
    d, out = f16(b, 52), []
    for e in range(256):
        if e < 160:
            t = trit(b[e % 32], e // 32)
        elif e < 240:
            t = trit(b[32 + (e - 160) % 16], (e - 160) // 16)
        else:
            t = trit(b[48 + (e - 240) % 4], (e - 240) // 4)
        out.append(d * (t - 1))
    return out


def iq4_nl(b):  # d | qs[16]: w = d*table[4-bit q]
    return [f16(b, 0) * IQ4_NL_VALUES[nibble(b[2:], 16, e)] for e in range(32)]


def iq4_xs(b):  # d | scales_h (u16) | scales_l[4] | qs[128]: 8 groups of 32, 6-bit scale s, w = d*(s-32)*table[q]
    d, high, out = f16(b, 0), u16(b, 2), []
    for e in range(256):
        g = e // 32
        s = (b[4 + g // 2] >> 4 * (g % 2) & 15) | (high >> 2 * g & 3) << 4
        out.append(d * (s - 32) * IQ4_NL_VALUES[nibble(b[8 + 16 * g:], 16, e % 32)])
    return out


def mxfp4(b):  # e (E8M0) | qs[16]: w = 2^(e-128) * doubled e2m1 value
    return [2.0 ** (b[0] - 128) * FP4_VALUES[nibble(b[1:], 16, e)] for e in range(32)]


def ue4m3_half(x: int) -> float:
    """NVFP4's scale byte (4 exponent bits, bias 7, 3 mantissa bits), halved as the doubled e2m1 table needs."""
    exp, man = x >> 3 & 15, x & 7
    raw = man * 2.0 ** -9 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return 0.0 if x in (0, 0x7F) else raw / 2


def nvfp4(b):  # d[4] (UE4M3) | qs[32]: 4 groups of 16, w = scale * doubled e2m1 value
    return [ue4m3_half(b[e // 16]) * FP4_VALUES[nibble(b[4 + 8 * (e // 16):], 8, e % 16)] for e in range(64)]


def iq2_xxs(b):  # d | 8 x (4 lattice indices, u32: 4 x 7 sign bits + 4-bit scale): groups of 8 on the E8 lattice
    d, points, out = f16(b, 0), grid(Q.IQ2_XXS), []
    for g in range(8):
        word = u32(b, 2 + 8 * g + 4)
        db = d * (0.5 + (word >> 28)) * 0.25
        for k in range(4):
            point, signs = points[b[2 + 8 * g + k]], sign_byte(word >> 7 * k & 127)
            out += [db * point[j] * flip(signs, j) for j in range(8)]
    return out


def iq2_xs(b):  # d | qs u16[32] (9-bit index, 7 sign bits) | scales[8] (two 4-bit scales per 32)
    d, points, out = f16(b, 0), grid(Q.IQ2_XS), []
    for g in range(8):
        for k in range(4):
            q = u16(b, 2 + 2 * (4 * g + k))
            db = d * (0.5 + (b[66 + g] >> 4 * (k // 2) & 15)) * 0.25
            point, signs = points[q & 511], sign_byte(q >> 9)
            out += [db * point[j] * flip(signs, j) for j in range(8)]
    return out


def iq2_s(b):  # d | qs[32] index low bits | signs[32] | qh[8] index high bits | scales[8]
    d, points, out = f16(b, 0), grid(Q.IQ2_S), []
    for g in range(8):
        for k in range(4):
            index = b[2 + 4 * g + k] | (b[66 + g] >> 2 * k & 3) << 8
            db = d * (0.5 + (b[74 + g] >> 4 * (k // 2) & 15)) * 0.25
            point, signs = points[index], b[34 + 4 * g + k]
            out += [db * point[j] * flip(signs, j) for j in range(8)]
    return out


def iq3_xxs(b):  # d | qs[64] (one index per 4 weights) | 8 x u32 (4 x 7 sign bits + 4-bit scale)
    d, points, out = f16(b, 0), grid(Q.IQ3_XXS), []
    for g in range(8):
        word = u32(b, 66 + 4 * g)
        db = d * (0.5 + (word >> 28)) * 0.5
        for k in range(4):
            signs = sign_byte(word >> 7 * k & 127)
            four = [*points[b[2 + 8 * g + 2 * k]], *points[b[2 + 8 * g + 2 * k + 1]]]
            out += [db * four[j] * flip(signs, j) for j in range(8)]
    return out


def iq3_s(b):  # d | qs[64] index low bits | qh[8] index high bits | signs[32] | scales[4] (4-bit, per 32)
    d, points, out = f16(b, 0), grid(Q.IQ3_S), []
    for g in range(8):
        db = d * (1 + 2 * (b[106 + g // 2] >> 4 * (g % 2) & 15))
        for k in range(4):
            lo = [b[2 + 8 * g + 2 * k + i] | (b[66 + g] >> (2 * k + i) & 1) << 8 for i in (0, 1)]
            eight = [*points[lo[0]], *points[lo[1]]]
            out += [db * eight[j] * flip(b[74 + 4 * g + k], j) for j in range(8)]
    return out


def iq1_s(b):  # d | qs[32] index low bits | qh u16[8] (4 x 3 index bits, 3-bit scale, delta sign)
    d, points, out = f16(b, 0), grid(Q.IQ1_S), []
    for g in range(8):
        h = u16(b, 34 + 2 * g)
        dl, delta = d * (2 * (h >> 12 & 7) + 1), -0.125 if h & 0x8000 else 0.125
        for k in range(4):
            point = points[b[2 + 4 * g + k] | (h >> 3 * k & 7) << 8]
            out += [dl * (point[j] + delta) for j in range(8)]
    return out


def iq1_m(b):  # qs[32] index low bits | qh[16] (3 index bits + delta sign, per 8) | 4 x u16 (3-bit scales, d)
    sc = [u16(b, 48 + 2 * i) for i in range(4)]
    d_bits = sum((sc[i] >> 12) << 4 * i for i in range(4))      # d's 16 bits: the top nibble of each
    d, points, out = float(np.uint16(d_bits).view(np.float16)), grid(Q.IQ1_S), []
    for g in range(8):
        for k in range(4):
            h = b[32 + 2 * g + k // 2] >> 4 * (k % 2)
            scale = sc[g // 2] >> (6 * (g % 2) + 3 * (k // 2)) & 7
            point, delta = points[b[4 * g + k] | (h & 7) << 8], -0.125 if h & 8 else 0.125
            out += [d * (2 * scale + 1) * (point[j] + delta) for j in range(8)]
    return out


# type -> (hand decoder, byte offsets of its fp16 scales)
DECODERS = {Q.Q2_K: (q2_k, (80, 82)), Q.Q3_K: (q3_k, (108,)), Q.TQ1_0: (tq1_0, (52,)), Q.TQ2_0: (tq2_0, (64,)),
            Q.IQ4_NL: (iq4_nl, (0,)), Q.IQ4_XS: (iq4_xs, (0,)), Q.MXFP4: (mxfp4, ()), Q.NVFP4: (nvfp4, ()),
            Q.IQ2_XXS: (iq2_xxs, (0,)), Q.IQ2_XS: (iq2_xs, (0,)), Q.IQ2_S: (iq2_s, (0,)),
            Q.IQ3_XXS: (iq3_xxs, (0,)), Q.IQ3_S: (iq3_s, (0,)), Q.IQ1_S: (iq1_s, (0,)), Q.IQ1_M: (iq1_m, ())}


def random_blocks(rng, qtype, n: int) -> np.ndarray:
    """n random blocks of `qtype` (uint8 [n, block bytes]) whose scales are small finite numbers."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for at in DECODERS[qtype][1]:
        raw[:, at:at + 2] = rng.uniform(1e-3, 1e-2, size=(n, 1)).astype(np.float16).view(np.uint8)
    if qtype == Q.MXFP4:
        raw[:, 0] = rng.integers(118, 128, size=n)                        # 2^-10 ... 2^-1
    if qtype == Q.NVFP4:
        raw[:, :4] = rng.integers(8, 0x7F, size=(n, 4))                  # normal UE4M3 numbers
    if qtype == Q.IQ1_M:  # d is spread over the top nibbles of the four scale words
        d = rng.uniform(1e-3, 1e-2, size=n).astype(np.float16).view(np.uint16)
        for i in range(4):
            raw[:, 49 + 2 * i] = (raw[:, 49 + 2 * i] & 0x0F) | ((d >> 4 * i & 15) << 4).astype(np.uint8)
    return raw


def load_attn_q(tmp_path, raw: np.ndarray, qtype) -> np.ndarray:
    """Write a WIDE model whose blk.0.attn_q.weight holds `raw` as `qtype`; load it; return that weight."""
    write_gguf(tmp_path / "t.gguf", WIDE, types={"blk.0.attn_q.weight": (raw, qtype)})
    m = llama.load_checkpoint(tmp_path / "t.gguf")
    return m.layers[0].attention.wq.weight.detach().double().numpy()


@pytest.mark.parametrize("qtype", list(DECODERS), ids=lambda t: t.name)
def test_each_type_dequantizes_as_its_layout_says(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    distinct = random_blocks(rng, qtype, DISTINCT)
    decode = DECODERS[qtype][0]
    decoded = np.array([decode(bytes(block)) for block in distinct])
    which = np.arange(ROWS * WIDE.dim // gguf.GGML_QUANT_SIZES[qtype][0]) % DISTINCT   # block i is distinct[i % 37]
    blocks, expected = distinct[which], decoded[which].reshape(ROWS, WIDE.dim)
    got = load_attn_q(tmp_path, blocks.reshape(ROWS, -1), qtype)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("qtype, index, entry", [
    (Q.IQ2_XXS, 1, 0x080808080808082b), (Q.IQ2_XXS, 255, 0x2b2b2b1908081908),
    (Q.IQ2_XS, 511, 0x2b2b2b2b2b2b2b2b), (Q.IQ2_S, 1, 0x080808080808082b),
    (Q.IQ3_XXS, 1, 0x04040414), (Q.IQ3_XXS, 255, 0x3e341c04), (Q.IQ3_S, 511, 0x0f0f0101),
    (Q.IQ1_S, 1, 0xffffffffffffff01), (Q.IQ1_S, 2046, 0x01010101010101ff)], ids=str)
def test_lattices_match_llama_cpp(qtype, index, entry):
    """A few points of the tables in llama.cpp's ggml-common.h (one byte per coordinate, lowest first)."""
    width = grid(qtype).shape[1]
    coords = np.frombuffer(entry.to_bytes(width, "little"), np.int8 if qtype == Q.IQ1_S else np.uint8)
    np.testing.assert_array_equal(grid(qtype)[index], coords)


def test_every_type_the_package_dequantizes_is_read():
    named = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
             "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
             "TQ1_0", "TQ2_0", "MXFP4"}
    assert named <= set(llama.gguf_types())
    assert not {"I8", "I16", "I32", "I64", "F64", "Q8_K"} & set(llama.gguf_types())


@pytest.mark.parametrize("qtype", [Q.TQ1_0, Q.TQ2_0, Q.MXFP4], ids=lambda t: t.name)
def test_quantized_by_the_package_from_exact_values(tmp_path, qtype):
    """Values the type represents exactly come back exactly: written with gguf.quants.quantize."""
    rng = np.random.default_rng(1)
    block_weights = gguf.GGML_QUANT_SIZES[qtype][0]
    if qtype == Q.MXFP4:   # per 32: a power of two times e2m1 values, the largest magnitude 6 (the block's max)
        levels = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6])
        q = rng.choice(levels, size=(ROWS, WIDE.dim))
        q[:, ::block_weights] = 6
        scale = 2.0 ** rng.integers(-8, -2, size=(ROWS, WIDE.dim // block_weights, 1))
    else:                  # per 256: d times -1, 0 or +1, with one +1 so that d is the block's max
        q = rng.integers(-1, 2, size=(ROWS, WIDE.dim)).astype(float)
        q[:, ::block_weights] = 1
        scale = rng.uniform(1e-3, 1e-2, size=(ROWS, WIDE.dim // block_weights, 1)).astype(np.float16)
    values = (q.reshape(ROWS, -1, block_weights) * scale.astype(np.float64)).reshape(ROWS, WIDE.dim)
    raw = gguf.quants.quantize(values.astype(np.float32), qtype)
    np.testing.assert_array_equal(load_attn_q(tmp_path, raw, qtype), values)


def test_an_unsupported_type_is_named_in_one_line(tmp_path):
    raw = np.zeros((ROWS, WIDE.dim // 256 * gguf.GGML_QUANT_SIZES[Q.Q8_K][1]), np.uint8)
    write_gguf(tmp_path / "t.gguf", WIDE, types={"blk.0.attn_q.weight": (raw, Q.Q8_K)})
    with pytest.raises(llama.CheckpointError) as e:
        llama.load_checkpoint(tmp_path / "t.gguf")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 't.gguf'}: tensor blk.0.attn_q.weight has GGUF type Q8_K, not supported")


def test_a_type_unknown_to_the_package_is_named_in_one_line(tmp_path):
    """llama.cpp adds types before the gguf package knows them (its Q2_0, number 42, is unknown to gguf 0.19):
    the reader cannot even list the tensors. Here number 250, which no type has. The tensor's entry in the
    header: name, n_dims (u32), n_dims x u64 sizes, type (u32)."""
    write_gguf(tmp_path / "t.gguf", WIDE)
    raw = bytearray((tmp_path / "t.gguf").read_bytes())
    name = b"blk.0.attn_q.weight"
    at = raw.index(name) + len(name) + 4 + 2 * 8
    assert int.from_bytes(raw[at:at + 4], "little") == Q.Q4_1
    raw[at:at + 4] = (250).to_bytes(4, "little")
    (tmp_path / "t.gguf").write_bytes(raw)
    with pytest.raises(llama.CheckpointError) as e:
        llama.load_checkpoint(tmp_path / "t.gguf")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 't.gguf'}: a tensor type the installed gguf package does not know")
    assert "250" in str(e.value)


def test_gguf_linear_bits_counts_the_linears_bytes(tmp_path):
    args = llama.ModelArgs(**TINY)   # dim 32, 4 heads of 8 (2 for k/v), hidden 96, 2 blocks
    q8 = np.zeros((32, 32 // 32 * 34), np.uint8)                      # attn_q of block 0 in Q8_0
    write_gguf(tmp_path / "t.gguf", args, types={"blk.0.attn_q.weight": (q8, Q.Q8_0)})
    # per block: q 32x32, k 16x32, v 16x32, o 32x32, gate/up 96x32, down 32x96 = 12288 weights
    weights = 2 * (1024 + 512 + 512 + 1024 + 3 * 3072)
    n_bytes = weights // 32 * 20 + 1024 // 32 * (34 - 20)             # Q4_1: 20 bytes per 32; Q8_0: 34
    bits = llama.gguf_linear_bits(tmp_path / "t.gguf")
    assert bits == {"total": 8 * n_bytes / weights, "bytes": n_bytes, "linear_weights": weights,
                    "types": {"Q4_1": 13, "Q8_0": 1}}                 # the Q8_0 embedding is not a linear
    assert bits["total"] == pytest.approx(5.1458, abs=1e-4)


def test_gguf_linear_bits_of_a_file_without_linears(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), arch="llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(llama.CheckpointError, match="t.gguf: no block linears"):
        llama.gguf_linear_bits(tmp_path / "t.gguf")
