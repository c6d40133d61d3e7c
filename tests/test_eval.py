"""The perplexity protocol, eval.py end to end, and one clear line for every kind of bad input."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import eval as ev
import model as llama
from conftest import ROOT, TINY, random_state, train_sentencepiece, write_gguf, write_hf, write_meta


class FixedLogits(torch.nn.Module):
    """Logit `c` on token (previous + 1) mod V, zero elsewhere: p(correct) = e^c / (e^c + V - 1)."""

    def __init__(self, vocab: int, c: float):
        super().__init__()
        self.vocab, self.c = vocab, c

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.vocab)
        logits.scatter_(-1, ((tokens + 1) % self.vocab)[..., None], self.c)
        return logits


def test_uniform_logits_give_vocab_size():
    windows = ev.make_windows([t % 37 for t in range(100)], seqlen=10, windows=None)
    result = ev.perplexity(FixedLogits(vocab=37, c=0.0), windows)
    assert result["tokens"] == 10 * 9
    assert result["ppl"] == pytest.approx(37, rel=1e-6)


def test_known_logits_give_hand_computed_ppl():
    V, c = 50, 2.0
    # a stream where the next token is always previous + 1 (mod V), except where it jumps
    ids = [(t % V) for t in range(40)]
    ids[25] = 7  # position 25 of window 2 (index 5 of window [20, 30)) is predicted wrong
    windows = ev.make_windows(ids, seqlen=10, windows=3)
    p_right = math.exp(c) / (math.exp(c) + V - 1)
    p_wrong = 1 / (math.exp(c) + V - 1)
    # window 3 = ids[20:30]: scored positions 21..29; position 25 is wrong, and position 26 (after the jump)
    # expects 8 but sees 26: wrong again
    nll = -(25 * math.log(p_right) + 2 * math.log(p_wrong))
    assert ev.perplexity(FixedLogits(V, c), windows)["ppl"] == pytest.approx(math.exp(nll / 27), rel=1e-6)


def test_make_windows():
    w = ev.make_windows(list(range(25)), seqlen=8, windows=None)
    assert w.tolist() == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    assert ev.make_windows(list(range(25)), seqlen=8, windows=2).shape == (2, 8)
    with pytest.raises(data.DataError, match="text: 4 windows requested, but the text holds only 3 windows of 8"):
        ev.make_windows(list(range(25)), seqlen=8, windows=4)
    with pytest.raises(data.DataError, match="text: 7 tokens, fewer than one window of 8"):
        ev.make_windows(list(range(7)), seqlen=8, windows=None)


def run_main(capsys, *argv):
    rc = ev.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def meta_ckpt(tmp_path):
    """A tiny Meta checkpoint with a sentencepiece tokenizer in its parent directory (Meta's layout)."""
    sp = train_sentencepiece(tmp_path / "tokenizer.model", vocab_size=300)
    args = llama.ModelArgs(**{**TINY, "vocab_size": 300})
    state = random_state(args)
    write_meta(tmp_path / "tiny", state, args, shards=2)
    return tmp_path / "tiny", sp, state, args


def test_eval_end_to_end_with_bos(capsys, tmp_path, meta_ckpt):
    ckpt, sp, state, args = meta_ckpt
    text = "the quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "text.txt").write_text(text)
    rc, out, err = run_main(capsys, "--ckpt", ckpt, "--text", tmp_path / "text.txt", "--seqlen", 32, "--json")
    assert rc == 0
    report = json.loads(out.strip().splitlines()[-1])
    # independent recomputation: one BOS at the very start, then float64 log-softmax window by window
    import sentencepiece as spm
    ids = [1] + spm.SentencePieceProcessor(model_file=str(sp)).encode(text)
    n = len(ids) // 32
    m = llama.build_model(args, {k: (lambda v=v: v) for k, v in state.items()}, "ref")
    nll = 0.0
    for i in range(n):
        window = torch.tensor([ids[i * 32:(i + 1) * 32]])
        logp = torch.log_softmax(m(window)[0].double(), -1)
        nll -= logp[torch.arange(31), window[0, 1:]].sum().item()
    assert report["tokens"] == n * 31 and report["windows"] == n
    assert report["ppl"] == pytest.approx(math.exp(nll / (n * 31)), rel=1e-4)
    assert "ETA" in err


def test_eval_gguf_with_its_own_tokenizer(capsys, tmp_path, tiny_args):
    args = llama.ModelArgs(**{**TINY, "vocab_size": 256 + 5})  # the test vocabulary: 256 bytes + 5 merges
    write_gguf(tmp_path / "tiny.gguf", args)
    (tmp_path / "t.txt").write_text("hello world " * 40)
    rc, out, _ = run_main(capsys, "--ckpt", tmp_path / "tiny.gguf", "--text", tmp_path / "t.txt",
                          "--seqlen", 16, "--windows", 2, "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and report["tokens"] == 2 * 15 and np.isfinite(report["ppl"])


def test_eval_wikitext2_and_c4_files(capsys, tmp_path):
    import gzip
    write_gguf(tmp_path / "t.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    (tmp_path / "wiki.test.raw").write_text(" \n = Title = \n \n hello world .\n" * 30)
    rc, out, _ = run_main(capsys, "--ckpt", tmp_path / "t.gguf", "--data", "wikitext2", tmp_path / "wiki.test.raw",
                          "--seqlen", 16, "--json")
    report = json.loads(out.strip().splitlines()[-1])
    n = len(data.load_tokenizer(tmp_path / "t.gguf").encode(data.wikitext2_text(tmp_path), bos=False)) // 16
    assert rc == 0 and report["windows"] == n  # wikitext2: every window by default
    with gzip.open(tmp_path / "c4-validation.00000-of-00008.json.gz", "wt") as f:
        f.writelines(json.dumps({"text": f"hello world {i}"}) + "\n" for i in range(200))
    rc, out, _ = run_main(capsys, "--ckpt", tmp_path / "t.gguf", "--data", "c4", tmp_path, "--seqlen", 8, "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and report["windows"] == 256  # c4: GPTQ's 256 windows


def test_eval_embedded_default_short_run(capsys):
    rc, out, _ = run_main(capsys, "--seqlen", 256, "--windows", 2, "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and report["tokens"] == 2 * 255
    assert 5 < report["ppl"] < 60  # a broken model or tokenizer lands in the thousands


# -----------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, no traceback

def truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def case_missing_path(tmp):
    return ["--ckpt", tmp / "nowhere" / "model"], "nowhere/model: no such file or directory"


def case_unknown_name(tmp):
    return ["--ckpt", "llama2-7b"], "llama2-7b: no checkpoint of that name (looked for"


def case_empty_dir(tmp):
    (tmp / "empty").mkdir()
    return ["--ckpt", tmp / "empty"], "empty: directory is empty"


def case_unknown_dir(tmp):
    (tmp / "d").mkdir()
    (tmp / "d" / "notes.txt").write_text("x")
    return ["--ckpt", tmp / "d"], "neither params.json (Meta layout) nor config.json"


def case_params_without_weights(tmp):
    (tmp / "m").mkdir()
    (tmp / "m" / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "n_heads": 4}))
    return ["--ckpt", tmp / "m"], "params.json but no consolidated.*.pth weights"


def case_bad_params_json(tmp):
    (tmp / "m").mkdir()
    (tmp / "m" / "params.json").write_text("{dim: 32")
    return ["--ckpt", tmp / "m"], "params.json: not valid JSON"


def case_truncated_pth(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args)
    truncate(tmp / "m" / "consolidated.00.pth")
    return ["--ckpt", tmp / "m"], "consolidated.00.pth: unreadable or truncated"


def case_truncated_safetensors(tmp):
    args = llama.ModelArgs(**TINY)
    write_hf(tmp / "hf", random_state(args), args)
    truncate(tmp / "hf" / "model.safetensors", keep=0.9)
    return ["--ckpt", tmp / "hf"], "model.safetensors: unreadable or truncated"


def case_missing_shard(tmp):
    args = llama.ModelArgs(**TINY)
    write_hf(tmp / "hf", random_state(args), args, shards=2)
    (tmp / "hf" / "model-00002-of-00002.safetensors").unlink()
    return ["--ckpt", tmp / "hf"], "model-00002-of-00002.safetensors: listed in model.safetensors.index.json"


def case_truncated_gguf(tmp):
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**TINY))
    truncate(tmp / "t.gguf", keep=0.6)
    return ["--ckpt", tmp / "t.gguf"], "t.gguf: unreadable or truncated GGUF"


def case_shape_disagrees(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args)
    params = json.loads((tmp / "m" / "params.json").read_text())
    (tmp / "m" / "params.json").write_text(json.dumps({**params, "n_kv_heads": 4}))
    return ["--ckpt", tmp / "m"], "layers.0.attention.wk.weight has shape (16, 32), the config implies (32, 32)"


def case_shards_disagree(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args, shards=2)
    part = torch.load(tmp / "m" / "consolidated.01.pth")
    del part["layers.0.attention.wq.weight"]
    torch.save(part, tmp / "m" / "consolidated.01.pth")
    return ["--ckpt", tmp / "m"], "consolidated.01.pth: does not hold the same tensors as consolidated.00.pth"


def case_hf_zero_heads(tmp):
    args = llama.ModelArgs(**TINY)
    write_hf(tmp / "hf", random_state(args), args)
    config = json.loads((tmp / "hf" / "config.json").read_text())
    (tmp / "hf" / "config.json").write_text(json.dumps({**config, "num_attention_heads": 0}))
    return ["--ckpt", tmp / "hf"], "config.json: num_attention_heads = 0 in the config is not a positive integer"


def case_empty_pth(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args)
    (tmp / "m" / "consolidated.00.pth").write_bytes(b"")
    return ["--ckpt", tmp / "m"], "consolidated.00.pth: unreadable or truncated"


def case_missing_tensor(tmp):
    args = llama.ModelArgs(**TINY)
    state = random_state(args)
    del state["layers.1.ffn_norm.weight"]
    write_meta(tmp / "m", state, args)
    return ["--ckpt", tmp / "m"], "missing 1 tensors, e.g. layers.1.ffn_norm.weight"


def case_unsupported_gguf_type(tmp):
    import gguf
    raw = np.zeros((TINY["dim"], TINY["dim"]), dtype=np.int32)
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**TINY),
               types={"blk.0.attn_q.weight": (raw, gguf.GGMLQuantizationType.I32)})
    return ["--ckpt", tmp / "t.gguf"], "tensor blk.0.attn_q.weight has GGUF type I32, not supported"


def case_missing_tokenizer(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args)
    return ["--ckpt", tmp / "m"], "m: no tokenizer found (looked for"


def case_text_too_short(tmp):
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    (tmp / "short.txt").write_text("hello world")
    return ["--ckpt", tmp / "t.gguf", "--text", tmp / "short.txt"], "short.txt: 6 tokens, fewer than one window of 2048"


def case_bad_data_spec(tmp):
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    return ["--ckpt", tmp / "t.gguf", "--data", "wikitext2"], "'wikitext2 PATH' or 'c4 PATH'"


def case_missing_wikitext(tmp):
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**{**TINY, "vocab_size": 261}))
    return ["--ckpt", tmp / "t.gguf", "--data", "wikitext2", tmp / "wt2"], "wt2: no such file"


def case_tokenizer_larger_than_model(tmp):
    write_gguf(tmp / "t.gguf", llama.ModelArgs(**TINY))  # 64 tokens in the model, 261 in the tokenizer
    (tmp / "t.txt").write_text("hello world " * 400)
    return ["--ckpt", tmp / "t.gguf", "--text", tmp / "t.txt"], "but the model's vocabulary has 64"


def case_hf_rope_scaling(tmp):
    args = llama.ModelArgs(**TINY)
    write_hf(tmp / "hf", random_state(args), args)
    config = json.loads((tmp / "hf" / "config.json").read_text())
    (tmp / "hf" / "config.json").write_text(json.dumps({**config, "rope_scaling": {"type": "linear", "factor": 2}}))
    return ["--ckpt", tmp / "hf"], "config.json: rope_scaling = {'type': 'linear', 'factor': 2} is not implemented"


def case_hf_bin_weights(tmp):
    args = llama.ModelArgs(**TINY)
    write_hf(tmp / "hf", random_state(args), args)
    (tmp / "hf" / "model.safetensors").rename(tmp / "hf" / "pytorch_model.bin")
    return ["--ckpt", tmp / "hf"], "pytorch_model*.bin is not read: convert it to safetensors"


def case_config_not_an_integer(tmp):
    args = llama.ModelArgs(**TINY)
    write_meta(tmp / "m", random_state(args), args)
    params = json.loads((tmp / "m" / "params.json").read_text())
    (tmp / "m" / "params.json").write_text(json.dumps({**params, "n_heads": "four"}))
    return ["--ckpt", tmp / "m"], "n_heads = 'four' in the config is not a positive integer"


BAD_INPUTS = [case for name, case in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.__name__[5:])
def test_bad_input_gives_one_clear_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SQUEEZE10_MODELS", str(tmp_path / "models"))
    argv, message = case(tmp_path)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


def test_cli_prints_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--ckpt", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'empty'}: directory is empty\n"
