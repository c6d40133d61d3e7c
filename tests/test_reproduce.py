"""tools/reproduce.py: the cache keys, a failing row, RESULTS.md and the figures drawn from the rows' JSON.

Rows are made by a stand-in for reproduce.make_row (a real row quantizes the 135M model: minutes), so these
tests check the bookkeeping around the rows in seconds; the scoring itself is eval.py's, tested in test_eval.py.
"""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from conftest import ROOT
from tools import cli
from tools import reproduce as rp

P = rp.Protocol(wiki_windows=2, heldout_windows=1, zeroshot_limit=5)
ROW = {r.name: r for r in rp.ROWS}


def fake_make(fail=()):
    """A make_row that invents a row's numbers from its position in ROWS (or raises for the names in `fail`),
    and records which rows it was asked for."""
    calls = []

    def make(row, key, qkey, protocol, scorer, out_dir):
        calls.append(row.name)
        if row.name in fail:
            raise RuntimeError(f"{row.name} went wrong\nsecond line")
        i = [r.name for r in rp.ROWS].index(row.name)
        fp = row.flags is None
        bits = {"total": 16.0} if fp else {"payload": 1 + i / 8, "index": 0.05 * i, "scales": 0.25,
                                           "total": round(1.3 + i / 8 + 0.05 * i, 4)}
        zs = {"tasks": {t: {"acc": 0.3 + 0.01 * i + 0.001 * j, "n": 5} for j, t in enumerate(rp.PAPER_TASKS)},
              "average": 0.3 + 0.01 * i} if row.zeroshot else None
        return rp.Record(name=row.name, key=key, command="cmd", ckpt="x", bits=bits, linear_weights=1000,
                         file_bytes=10, ppl_wiki=19.0 if fp else 20.0 + 37.5 * i, ppl_heldout=15.0 + 3 * i,
                         zeroshot=zs, rel_error_mean=None, bits_by_linear=None,
                         rel_error_by_block=None if fp else [0.1 * i + 0.01 * b for b in range(4)],
                         salient_picture=["0110", "1001"] if row.picture else None,
                         seconds={"quantize": 0.0, "wiki": 1.0, "heldout": 1.0, "total": 2.0},
                         protocol=asdict(protocol))
    make.calls = calls
    return make


def run(tmp_path, names, make):
    return rp.reproduce(names, P, results=tmp_path / "results", out_dir=tmp_path / "rows",
                        llamacpp=tmp_path / "llamacpp", make=make)


def test_the_cache_key_changes_with_what_a_row_depends_on_and_not_otherwise(tmp_path):
    for name in rp.QUANT_SOURCES + rp.EVAL_SOURCES:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "reproduce.py", tmp_path / "tools" / "reproduce.py")
    env = rp.environment()

    def keys(row=ROW["gptq3"], protocol=P):
        h = rp.source_hashes(tmp_path)
        quant = rp.quant_key(row, protocol, h, env) if row.flags is not None else None
        return quant, rp.row_key(row, protocol, h, env)

    assert rp.source_hashes(tmp_path) == {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
                                          for n in {"squeeze10.py", "model.py", "kernels.py", "data.py", "eval.py"}}
    quant, score = keys()
    assert keys() == (quant, score)                                       # deterministic
    fp_score = keys(ROW["fp"])[1]

    with open(tmp_path / "tools" / "reproduce.py", "a") as f:             # the driver (rows, tables): nothing
        f.write("\n# a new row or table\n")
    assert keys() == (quant, score) and keys(ROW["fp"])[1] == fp_score

    with open(tmp_path / "eval.py", "a") as f:                            # the scoring code, anywhere in the file,
        f.write("\n# a comment\n")                                       # a comment too: re-score, same file
    q2, s2 = keys()
    fp2 = keys(ROW["fp"])[1]
    assert q2 == quant and s2 != score and fp2 != fp_score

    with open(tmp_path / "squeeze10.py", "a") as f:                       # the quantizer: re-quantize
        f.write("\n# changed\n")
    q3, s3 = keys()
    assert q3 != quant and s3 != s2 and keys(ROW["fp"])[1] == fp2           # full precision: no quantizer

    other_flags = replace(ROW["gptq3"], flags="--preset gptq3 --nsamples 64")   # a setting: both
    assert keys(other_flags)[0] != q3 and keys(other_flags)[1] != s3
    more_windows = replace(P, wiki_windows=3)                            # the protocol: re-score only
    assert keys(protocol=more_windows) == (q3, keys(protocol=more_windows)[1]) != (q3, s3)
    other_limit = replace(P, zeroshot_limit=6)                           # zero-shot items: only rows that have it
    assert keys(ROW["gptq2"], other_limit) == keys(ROW["gptq2"])
    assert ROW["squeeze10"].zeroshot and keys(ROW["squeeze10"], other_limit)[1] != keys(ROW["squeeze10"])[1]
    assert keys(replace(ROW["gptq3"], shows="reworded"), P) == (q3, s3)  # words are not inputs
    assert keys(replace(ROW["gptq3"], flags=" --preset  gptq3 ")) == (q3, s3)  # nor spaces

    with open(tmp_path / "kernels.py", "a") as f:                         # both sides read kernels.py: both
        f.write("\n# changed at the very end\n")
    q4, s4 = keys()
    assert q4 != q3 and s4 != s3 and keys(ROW["fp"])[1] != fp2


def test_a_gguf_rows_key_is_its_files_bytes(tmp_path):
    (tmp_path / f"{rp.LLAMACPP_STEM}.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(100))
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    rows = rp.llamacpp_rows(tmp_path, tmp_path / "results")
    assert [r.name for r in rows] == ["llamacpp-Q4_K_M"] and rows[0].table == "llamacpp"
    h, env = rp.source_hashes(), rp.environment()
    key = rp.row_key(rows[0], P, h, env)
    assert rp.row_key(rows[0], P, h, env) == key
    (tmp_path / f"{rp.LLAMACPP_STEM}.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(99) + b"\1")
    assert rp.row_key(rows[0], P, h, env) != key


def test_a_gguf_rows_record_is_kept_where_its_file_is_not_here_and_made_again_once_it_is(tmp_path):
    """llama.cpp's files are made by hand, so a fresh clone has their records and not the files."""
    results, folder = tmp_path / "results", tmp_path / "llamacpp"
    results.mkdir()
    kept = rp.Record(name="llamacpp-IQ2_XXS", key="made where the file was", command="by hand", ckpt="x",
                     bits={"total": 3.891, "types": {"IQ2_XXS": 30}}, linear_weights=96, file_bytes=64,
                     ppl_wiki=123.25, ppl_heldout=98.5, zeroshot=None, rel_error_mean=None, bits_by_linear=None,
                     rel_error_by_block=None, salient_picture=None, protocol=asdict(P),
                     seconds={"quantize": 0.0, "wiki": 1.0, "heldout": 1.0, "total": 2.0})
    (results / "llamacpp-IQ2_XXS.json").write_text(json.dumps(asdict(kept)))
    (row,) = rp.llamacpp_rows(folder, results)
    assert row.name == "llamacpp-IQ2_XXS" and rp.absent(row)
    assert rp.row_key(row, P, rp.source_hashes(), rp.environment()) is None

    def make(row, key, *_):
        made.append(row.name)
        return replace(kept, key=key, ppl_wiki=321.5)
    made = []
    assert run(tmp_path, ["llamacpp"], make) == 0 and made == []        # nothing to make: kept as it is
    (cells,) = [c for c in table_cells((results / "RESULTS.md").read_text(), row.name) if len(c) == 8]
    assert "its file is not here" in cells[2] and cells[3:5] == [f"{3.891:.3f}", "123.25"]

    folder.mkdir()
    (folder / f"{rp.LLAMACPP_STEM}.IQ2_XXS.gguf").write_bytes(b"GGUF" + bytes(60))   # the file is back: its key
    assert run(tmp_path, ["llamacpp"], make) == 0 and made == ["llamacpp-IQ2_XXS"]
    (cells,) = [c for c in table_cells((results / "RESULTS.md").read_text(), row.name) if len(c) == 8]
    assert "its file is not here" not in cells[2] and cells[4] == "321.50"


def test_a_failed_row_does_not_stop_the_others_and_is_reported(tmp_path, capsys):
    make = fake_make(fail=("gptq2",))
    assert run(tmp_path, ["fp", "gptq2", "gptq3"], make) == 1
    assert make.calls == ["fp", "gptq2", "gptq3"]
    results = tmp_path / "results"
    assert (results / "fp.json").exists() and (results / "gptq3.json").exists()
    assert not (results / "gptq2.json").exists()
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1] == "error: row gptq2 failed: RuntimeError: gptq2 went wrong"
    md = (results / "RESULTS.md").read_text()
    assert "| gptq2 | `--preset gptq2` | GPTQ, 2 bits | failed: RuntimeError: gptq2 went wrong |" in md

    make = fake_make()                                                    # again: only the failed row is made
    assert run(tmp_path, ["fp", "gptq2", "gptq3"], make) == 0 and make.calls == ["gptq2"]
    make = fake_make()                                                    # nothing changed: nothing is made
    assert run(tmp_path, ["fp", "gptq2", "gptq3"], make) == 0 and make.calls == []


def test_an_interrupt_stops_the_run_and_keeps_the_rows_made(tmp_path):
    made = fake_make()

    def make(row, *args):
        if row.name == "gptq3":
            raise cli.Interrupted(signal.SIGINT)
        return made(row, *args)
    with pytest.raises(cli.Interrupted):
        run(tmp_path, ["fp", "gptq3", "gptq4"], make)
    assert made.calls == ["fp"] and [f.name for f in (tmp_path / "results").iterdir()] == ["fp.json"]
    assert rp.read_record(tmp_path / "results" / "fp.json").name == "fp"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_is_one_line_and_its_exit_code(monkeypatch, capsys, sig, code):
    def interrupted(names, protocol):
        raise cli.Interrupted(sig)
    monkeypatch.setattr(rp, "reproduce", interrupted)
    assert rp.main(["fp", "--device", "cpu"]) == code
    assert capsys.readouterr().err == f"error: interrupted by {signal.Signals(sig).name}\n"


def table_cells(md: str, name: str) -> list[list[str]]:
    """The cells of every RESULTS.md table line whose first cell is `name`."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith(f"| {name} |")]


def test_results_md_and_the_figures_are_drawn_from_the_rows_json(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    drawn = []
    save = figure.Figure.savefig
    monkeypatch.setattr(figure.Figure, "savefig", lambda self, *a, **k: (drawn.append(self), save(self, *a, **k)))
    names = ["fp", "squeeze10", "paper", "gptq3", "no-pbar"]
    assert run(tmp_path, names, fake_make()) == 0
    results = tmp_path / "results"
    record = {n: json.loads((results / f"{n}.json").read_text()) for n in names}
    record["gptq3"]["ppl_wiki"] = 123.4567                                # edited by hand, key kept: it shows
    (results / "gptq3.json").write_text(json.dumps(record["gptq3"]))
    drawn.clear()
    rows = rp.ROWS
    keys = {r.name: rp.row_key(r, P, rp.source_hashes(), rp.environment()) for r in rows}
    assert rp.write_results(rows, keys, results) == ""

    md = (results / "RESULTS.md").read_text()
    fp = record["fp"]
    for n in names:
        (cells,) = [c for c in table_cells(md, n) if len(c) == 8]
        r = record[n]
        assert cells[3].split()[0] == f"{r['bits']['total']:.3f}"
        assert cells[4] == rp.fmt_ppl(r["ppl_wiki"]) and cells[6] == rp.fmt_ppl(r["ppl_heldout"])
        assert cells[5] == f"{r['ppl_wiki'] / fp['ppl_wiki']:.2f}×"
    assert "123.46" in md and table_cells(md, "gptq4")[0][3].startswith("not made")
    assert table_cells(md, "gptq3")[-1][-1] == "(1)" and "(1) not recorded" in md   # fake_make records no machine
    for n in [r.name for r in rows if r.zeroshot and r.name in names]:  # the zero-shot rows
        (cells,) = [c for c in table_cells(md, n) if len(c) == 3 + len(rp.PAPER_TASKS)]
        assert cells[-1] == f"**{100 * record[n]['zeroshot']['average']:.2f}**"

    pts, fp_point = rp.points(rows, rp.read_records(rows, keys, results))
    assert {(p.name, p.bits, p.ppl_wiki, p.ppl_heldout, p.zeroshot) for p in pts} == {
        (n, r["bits"]["total"], r["ppl_wiki"], r["ppl_heldout"], r["zeroshot"] and r["zeroshot"]["average"])
        for n, r in record.items() if n != "fp"}
    assert (fp_point.ppl_wiki, fp_point.ppl_heldout) == (fp["ppl_wiki"], fp["ppl_heldout"])

    frontier, zeroshot, method = drawn                                    # what the figures plot: the same numbers
    for ax, field in zip(frontier.axes, ("ppl_wiki", "ppl_heldout")):
        plotted = {tuple(xy) for c in ax.collections for xy in c.get_offsets().tolist()}
        assert plotted == {(r["bits"]["total"], r[field]) for n, r in record.items() if n != "fp"}
        assert [tuple(line.get_ydata()) for line in ax.lines] == [(fp[field], fp[field])]
        assert {t.get_text() for t in ax.texts} == set(names) - {"fp"}
    plotted = {tuple(xy) for c in zeroshot.axes[0].collections for xy in c.get_offsets().tolist()}
    assert plotted == {(r["bits"]["total"], r["zeroshot"]["average"]) for n, r in record.items()
                       if n != "fp" and r["zeroshot"]}
    assert (results / "frontier.png").read_bytes()[:4] == b"\x89PNG" and (results / "zeroshot.png").exists()
    drift = method.axes[0]                                # DRIFT's rows made here: gptq3 (off), squeeze10 (target)
    assert [tuple(line.get_ydata()) for line in drift.lines] == [tuple(record[n]["rel_error_by_block"])
                                                                 for n in ("gptq3", "squeeze10")]
    assert [im.get_array().tolist() for ax in method.axes[1:3] for im in ax.images] == [
        [[c == "1" for c in line] for line in record[n]["salient_picture"]] for n in ("paper", "squeeze10")]
    bars = method.axes[3].patches                                         # payload, index, scales: stacked
    split = [n for n in names if n not in ("fp", "no-pbar")]              # version2 rows are left out
    assert [round(b.get_width(), 6) for b in bars] == [round(record[n]["bits"][part], 6) for part in
                                                       ("payload", "index", "scales") for n in split]


def test_a_curve_joins_its_made_rows_in_order_of_bits(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    drawn = []
    save = figure.Figure.savefig
    monkeypatch.setattr(figure.Figure, "savefig", lambda self, *a, **k: (drawn.append(self), save(self, *a, **k)))
    names = ["gptq4", "gptq2", "gptq3-fias"]                              # one curve of two points, one of one
    assert run(tmp_path, names, fake_make()) == 0
    record = {n: json.loads((tmp_path / "results" / f"{n}.json").read_text()) for n in names}
    frontier = drawn[0]
    for ax, field in zip(frontier.axes, ("ppl_wiki", "ppl_heldout")):
        (curve,) = ax.lines                                               # no fp row: no horizontal line
        expected = sorted((record[n]["bits"]["total"], record[n][field]) for n in ("gptq2", "gptq4"))
        assert list(zip(curve.get_xdata(), curve.get_ydata())) == expected


def test_the_salient_picture_is_read_back_from_a_packed_file(tmp_path):
    """A corner of one linear's salient set, read from the file squeeze10.py wrote: in version 2 whole columns
    shared by each block of rows, in version 1 k of each row-group's weights per row, as the format promises."""
    from test_kernels import write_packed
    (tmp_path / "v1").mkdir(), (tmp_path / "v2").mkdir()
    v1 = rp.salient_picture(write_packed(tmp_path / "v1", "--preset", "paper") / "q.safetensors",
                            "layers.1.feed_forward.w2", 32, 96)
    v2 = rp.salient_picture(write_packed(tmp_path / "v2", "--block-rows", "8") / "q.safetensors",
                            "layers.1.feed_forward.w2", 32, 96)
    for picture in (v1, v2):
        assert len(picture) == 32 and {len(line) for line in picture} == {96} and set("".join(picture)) == {"0", "1"}
    assert {line.count("1") for line in v1} == {round(0.2 * 96)}          # w2, 96 wide: one row-group, k = 19
    assert {line.count("1") for line in v2} == {round(0.3 * 96)}          # k = 29 columns
    assert all(len(set(v2[b:b + 8])) == 1 for b in range(0, 32, 8))      # each block of 8 rows: one set
    assert len(set(v2)) > 1 and len(set(v1)) > 1                          # blocks (and rows) choose their own
def test_a_json_made_under_another_key_is_not_shown(tmp_path):
    assert run(tmp_path, ["fp", "gptq3"], fake_make()) == 0
    results = tmp_path / "results"
    stale = json.loads((results / "gptq3.json").read_text())
    stale["key"] = "0" * 64
    (results / "gptq3.json").write_text(json.dumps(stale))
    make = fake_make()
    assert run(tmp_path, ["fp"], make) == 0 and make.calls == []
    md = (results / "RESULTS.md").read_text()
    assert table_cells(md, "gptq3")[0][3] == "not made: `python tools/reproduce.py gptq3`"


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "frontier.png").write_bytes(b"an old figure")
    monkeypatch.setitem(sys.modules, "matplotlib", None)                  # `import matplotlib` raises ImportError
    assert run(tmp_path, ["fp", "gptq3"], fake_make()) == 0
    md = (results / "RESULTS.md").read_text()
    assert "the figures need matplotlib" in md and "](frontier.png)" not in md
    assert table_cells(md, "gptq3")[0][4] == rp.fmt_ppl(json.loads((results / "gptq3.json").read_text())["ppl_wiki"])
    assert not (results / "frontier.png").exists()                        # no stale figure beside new tables
    assert "the figures need matplotlib" in capsys.readouterr().err


def test_rows_are_chosen_by_name_or_table():
    default = rp.select_rows([], rp.ROWS)
    assert "gptq3" in [r.name for r in default] and all(r.table != "paper-ablations" for r in default)
    assert {r.table for r in rp.select_rows(["uniform"], rp.ROWS)} == {"uniform"}
    assert len(rp.select_rows(["all"], rp.ROWS)) == len(rp.ROWS)
    assert [r.name for r in rp.select_rows(["gptq3", "uniform"], rp.ROWS)][0] == "gptq3"
    assert len({r.name for r in rp.ROWS}) == len(rp.ROWS) and {r.table for r in rp.ROWS} <= set(rp.TABLES)


def test_bad_flags_give_one_line(capsys):
    for argv, message in ((["fp", "no-such-row"], "error: no-such-row: no such row or table; rows: fp, squeeze10"),
                          (["--device", "gpu"], "error: --device gpu: not a device torch knows"),
                          (["--windows", "3"], "error: unrecognized arguments: --windows")):
        with pytest.raises(SystemExit) as e:
            rp.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def test_it_runs_as_a_script_from_anywhere(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce.py"), "no-such-row"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no-such-row: no such row or table")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "results").exists()


def test_a_quantized_file_is_reused_while_its_key_holds(tmp_path, monkeypatch):
    runs = []

    def quantizer(cmd):
        out = cmd[cmd.index("--out") + 1]
        with open(out, "wb") as f:
            f.write(b"packed bytes")
        runs.append(cmd)
        return {"totals": {"n": len(runs)}}
    monkeypatch.setattr(rp, "run_quantizer", quantizer)
    row = ROW["gptq3"]
    path, report, _ = rp.quantized(row, "key1", P, tmp_path)
    assert runs[0][1:] == [str(ROOT / "squeeze10.py"), "--preset", "gptq3", "--device", "cpu", "--out", str(path),
                           "--json"]
    assert rp.quantized(row, "key1", P, tmp_path)[1] == report and len(runs) == 1
    path.write_bytes(b"changed by hand")                                  # not the file the key was made for
    assert rp.quantized(row, "key1", P, tmp_path)[1] == {"totals": {"n": 2}}
    assert rp.quantized(row, "key2", P, tmp_path)[1] == {"totals": {"n": 3}}


def test_the_quantizer_runs_as_its_own_process(capsys):
    ok = [sys.executable, "-c", "import sys; print('block 1/1', file=sys.stderr); print('report'); print('{\"a\": 1}')"]
    assert rp.run_quantizer(ok) == {"a": 1}
    assert "    block 1/1" in capsys.readouterr().err
    bad = [sys.executable, "-c", "import sys; print('error: --out x: bad', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(rp.RowError, match=r"^squeeze10.py exited with code 2: error: --out x: bad$"):
        rp.run_quantizer(bad)


def test_bits_by_linear_sums_the_report_per_kind_of_linear():
    layers = [{"name": f"layers.{i}.attention.wq", "shape": [4, 8], "bytes": 10 + i,
               "bits": {"payload": 1.0 + i, "index": 0.5, "scales": 0.25}} for i in range(2)]
    b = rp.bits_by_linear(layers)["wq"]
    assert b["total"] == 8 * 21 / 64 and b["payload"] == 1.5 and b["index"] == 0.5 and b["shape"] == [4, 8]


class StubScorer:
    """Scorer.score's answer without a model: make_row's bookkeeping is what these tests check."""
    def score(self, ckpt, zeroshot_too):
        self.ckpt = ckpt
        return {"ppl_wiki": 21.5, "ppl_heldout": 17.25, "zeroshot": {"average": 0.4} if zeroshot_too else None,
                "seconds": {"wiki": 3.0, "heldout": 2.0}}


def test_a_rows_record_takes_its_bits_from_the_file(tmp_path, monkeypatch):
    layers = [{"name": f"layers.{i}.attention.wq", "shape": [4, 8], "bytes": 12, "rel_error": 0.25 + i,
               "bits": {"payload": 1.5, "index": 0.5, "scales": 1.0}} for i in range(2)]
    report = {"totals": {"bits_per_linear_weight": {"payload": 1.5, "index": 0.5, "scales": 1.0, "total": 3.0},
                         "linear_weights": 64, "file_bytes": 999, "rel_error_mean": 0.25}, "layers": layers}

    def quantizer(cmd):
        (tmp_path / "gptq3.safetensors").write_bytes(b"x")
        return report
    monkeypatch.setattr(rp, "run_quantizer", quantizer)
    rec = rp.make_row(replace(ROW["gptq3"], zeroshot=True), "k", "q", P, StubScorer(), tmp_path)
    assert rec.bits == report["totals"]["bits_per_linear_weight"] and rec.linear_weights == 64
    assert rec.file_bytes == 999 and rec.rel_error_mean == 0.25 and (rec.ppl_wiki, rec.ppl_heldout) == (21.5, 17.25)
    assert rec.bits_by_linear == {"wq": {"shape": [4, 8], "total": 3.0, "payload": 1.5, "index": 0.5, "scales": 1.0}}
    assert rec.zeroshot == {"average": 0.4} and rec.protocol == asdict(P)
    assert rec.rel_error_by_block == [0.25, 1.25] and rec.salient_picture is None   # gptq3: no picture
    assert rec.machine == rp.machine() and "cores" in rec.machine

    scorer = StubScorer()
    rec = rp.make_row(ROW["fp"], "k", None, P, scorer, tmp_path)
    assert rec.bits == {"total": 16.0} and rec.ckpt == "embedded" and scorer.ckpt == rp.model.resolve_checkpoint(None)

    gguf = tmp_path / f"{rp.LLAMACPP_STEM}.Q2_K.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    counted = {"total": 3.3125, "bytes": 40, "linear_weights": 96, "types": {"Q2_K": 5, "Q4_K": 2}}
    monkeypatch.setattr(rp.model, "gguf_linear_bits", lambda path: counted)
    (row,) = rp.llamacpp_rows(tmp_path, tmp_path / "results")
    rec = rp.make_row(row, "k", None, P, StubScorer(), tmp_path)
    assert rec.bits == {"total": 3.3125, "types": {"Q2_K": 5, "Q4_K": 2}} and rec.linear_weights == 96
    assert rec.file_bytes == 64 and rec.zeroshot is None
    (cells,) = [c for c in table_cells(rp.render_results([row], {row.name: rec}, [], "", {}), row.name) if len(c) == 8]
    assert cells[2:5] == ["llama.cpp's Q2_K (5 × Q2_K, 2 × Q4_K)", f"{3.3125:.3f}", "21.50"]


def test_every_row_s_flags_are_valid_squeeze10_settings():
    """Each quantized row's flags parse with squeeze10.py's own parser and give checked Settings."""
    import squeeze10 as sq
    from tools import cli
    parser = cli.quantize_parser(sq)
    for row in rp.ROWS:
        if row.flags is None:
            continue
        a = parser.parse_args(row.flags.split())
        given = {f: getattr(a, f) for f in sq.Settings.__dataclass_fields__ if hasattr(a, f)}
        s = cli.settings_from_args(sq, a.preset, given)
        assert isinstance(s, sq.Settings), row.name
    assert cli.settings_from_args(sq, "paper", dict(mid_bits="none")).mid_bits is None   # the row paper-mid16
