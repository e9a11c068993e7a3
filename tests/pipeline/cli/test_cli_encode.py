"""`m3pipe encode` end to end: real files in, real Parquet out, read back with pyarrow."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.engine.embedder import EmbedEngine
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_REJECTS
from pipeline.storage.output_dir import part_entries
from pipeline.testing.corpora import documents, mixed_texts
from schemas.options import EncodeOptions


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _args(inp, out, *extra):
    return [
        "encode",
        str(inp),
        "--out",
        str(out),
        "--model",
        "random:tiny",
        "--max-length",
        "512",
        "-q",
        *extra,
    ]


def test_clean_input_encodes_every_record(tmp_path, tiny):
    texts = mixed_texts()
    inp = _write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    )
    out = tmp_path / "out"
    assert main(_args(inp, out, "--shard-docs", "5", "--dtype", "float32")) == EXIT_OK

    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.json",
        "_rejects.jsonl",
        "_shards.jsonl",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = pq.read_table(out)  # the directory, as README shows: _ and . files are skipped
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(len(texts))]
    expected = EmbedEngine(tiny, EncodeOptions(max_length=512, dtype="float32")).encode(
        documents(texts)
    )
    np.testing.assert_allclose(
        table.column("dense").combine_chunks().flatten().to_numpy(),
        expected.table.column("dense").combine_chunks().flatten().to_numpy(),
        atol=1e-5,
    )
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["input_records"] == manifest["counts"]["documents"] == len(texts)
    assert manifest["counts"]["rejected"] == 0
    assert [f["name"] for f in part_entries(out)] == [f"part-0000{i}.parquet" for i in range(3)]
    assert manifest["model"]["model"] == "random:tiny"
    assert (out / "_rejects.jsonl").read_text() == ""


def test_bad_records_are_rejected_and_good_ones_embedded(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(
        b'{"id": "a", "text": "first good"}\n'
        b"{not json}\n"
        b'{"id": 12, "text": "numeric id"}\n'
        b'{"id": "b"}\n'
        b'{"id": "c", "text": 3.5}\n'
        b'{"id": "d", "text": "  "}\n'
        b'{"id": "a", "text": "duplicate"}\n'
        b'{"id": "e", "text": "bad \xc3\x28 utf8"}\n'
        b'{"id": "f", "text": "second good \xf0\x9f\x9a\x80"}\n'
    )
    out = tmp_path / "out"
    assert main(_args(inp, out)) == EXIT_REJECTS
    rows = pq.read_table(out / "part-00000.parquet").column("id").to_pylist()
    assert rows == ["a", "f"]
    rejects = [json.loads(x) for x in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 4, 5, 6, 7, 8]
    assert all(r["source"] == str(inp) and r["reason"] for r in rejects)
    assert rejects[5]["reason"] == f"duplicate id (first seen at {inp} line 1)"
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    assert counts["input_records"] == 9 == counts["documents"] + counts["rejected"]


def test_empty_and_missing_inputs_fail_clearly(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(_args(empty, tmp_path / "o1")) == EXIT_FAILED
    assert "holds no records" in capsys.readouterr().err
    assert main(_args(tmp_path / "missing.jsonl", tmp_path / "o2")) == EXIT_FAILED
    assert "not found" in capsys.readouterr().err


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x y z"}])
    out = tmp_path / "out"
    assert main(_args(inp, out)) == EXIT_OK
    assert main(_args(inp, out)) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err
    assert main(_args(inp, out, "--overwrite")) == EXIT_OK


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--modes", "dense,nope"], "modes"),
        (["--max-length", "9000"], "max_length"),
        (["--long-docs", "chunk", "--chunk-overlap", "600"], "chunk_overlap"),
        (["--colbert-pool", "0"], "colbert_pool"),
        (["--colbert-pool", "17"], "colbert_pool"),
        (["--sparse-top-k", "0"], "sparse_top_k"),
        (["--modes", "dense", "--colbert-storage", "int8"], "colbert_storage applies to colbert"),
        (["--modes", "colbert", "--dense-storage", "binary"], "dense_storage applies to dense"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, capsys, flag, message):
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}])
    assert main(_args(inp, tmp_path / "out", *flag)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs_and_never_imports_flagembedding(tmp_path, model_cache):
    """The command as a user runs it (`python -m pipeline.cli`), with its summary line.

    The same process then loads a reranker and must not have imported FlagEmbedding:
    its package import breaks with some transformers releases (1.4.2 with 5.24), so
    encoding and reranking must not depend on it (it stays the parity reference)."""
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x y"}, {"id": "b", "text": ""}])
    script = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('pipeline.cli', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "from pipeline.engine.reranker import load_reranker\n"
        "from pipeline.settings import Settings\n"
        "load_reranker('random:tiny', device='cpu', cache_dir=Settings().cache_dir)\n"
        "assert not [m for m in sys.modules if m.startswith('FlagEmbedding')], 'imported'\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *_args(inp, tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_REJECTS, proc.stderr[-2000:]
    assert "1 documents -> 1 rows" in proc.stderr and "1 rejected" in proc.stderr


def _hostile_jsonl(root):
    good = [json.dumps({"id": f"g{i}", "text": f"good {i}"}) for i in range(4)]
    bad = [
        '{"id": "s", "text": "x \\ud800"}',
        "[" * 50_000 + "]" * 50_000,
        json.dumps({"id": "big", "text": "w " * 5000}),
        '{"id": "cut", "text": ',
    ]
    path = root / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(good[:2] + bad + good[2:]).encode() + b"\n")
    return path, [f"g{i}" for i in range(4)], len(bad)


def _hostile_csv(root):
    path = root / "in.csv"
    path.write_bytes(
        b'\xef\xbb\xbfid,text\ng0,"a ""quoted"" text"\ng1,fine\nbad,caf\xe9\n'
        + b"big,"
        + b"w " * 5000
        + b'\ng2,ok\ng3,"never closed\ng4,swallowed\n'
    )
    return path, ["g0", "g1", "g2"], 3


def _hostile_txt(root):
    directory = root / "docs"
    directory.mkdir()
    for i in range(3):
        (directory / f"g{i}.txt").write_text(f"good {i}")
    (directory / "big.txt").write_text("w " * 5000)
    (directory / "loop").symlink_to(directory, target_is_directory=True)
    (directory / "leak.txt").symlink_to(root / "in.jsonl")
    return directory, ["g0.txt", "g1.txt", "g2.txt"], 3


@pytest.mark.parametrize("make", [_hostile_jsonl, _hostile_csv, _hostile_txt])
def test_a_hostile_corpus_exits_3_with_every_record_accounted_for(tmp_path, tiny, make):
    (tmp_path / "in.jsonl").write_text("")  # a link target for the .txt case
    inp, good_ids, bad = make(tmp_path)
    out = tmp_path / "out"
    assert main(_args(inp, out, "--max-record-bytes", "4096")) == EXIT_REJECTS
    table = [pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))]
    ids = sorted(i for t in table for i in t.column("id").to_pylist())
    assert ids == sorted(good_ids)
    rejects = (out / "_rejects.jsonl").read_text().splitlines()
    assert len(rejects) == bad and all(json.loads(line)["reason"] for line in rejects)
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    assert counts["input_records"] == counts["rows"] + counts["rejected"] == len(good_ids) + bad


def test_reuse_reports_what_it_copied(tmp_path, capsys):
    records = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(12)]
    inp = _write_jsonl(tmp_path / "in.jsonl", records)
    assert main(_args(inp, tmp_path / "v1")) == EXIT_OK
    records[3]["text"] = "changed"
    _write_jsonl(inp, records[:-1])
    assert main(_args(inp, tmp_path / "v2", "--reuse", str(tmp_path / "v1"))) == EXIT_OK
    assert "10 reused, 1 encoded, 1 of the previous output dropped" in capsys.readouterr().err
    assert (
        main(_args(inp, tmp_path / "v3", "--reuse", str(tmp_path / "v1"), "--modes", "dense"))
        == EXIT_FAILED
    )
    assert "modes ['dense']" in capsys.readouterr().err


def test_compact_storage_from_the_command_line(tmp_path, capsys):
    """--storage compact: int8 dense and binary ColBERT, recorded in the manifest, a
    fraction of the bytes; the preset leaves out what the modes do not ask for; an exact
    output is not --reuse'd for a compact job (refused before anything is written)."""
    records = [{"id": f"d{i}", "text": f"document number {i} " * 20} for i in range(20)]
    inp = _write_jsonl(tmp_path / "in.jsonl", records)
    assert main(_args(inp, tmp_path / "exact")) == EXIT_OK
    assert main(_args(inp, tmp_path / "compact", "--storage", "compact")) == EXIT_OK
    options = json.loads((tmp_path / "compact" / "_manifest.json").read_text())["job"]["options"]
    assert options | {"dense_storage": "int8", "colbert_storage": "binary"} == options
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).glob("part-*"))
            for name in ("exact", "compact")}  # fmt: skip
    assert size["compact"] < size["exact"] / 4
    table = pq.read_table(tmp_path / "compact")
    assert {"dense_scale"} <= set(table.column_names)

    argv = _args(inp, tmp_path / "dense", "--storage", "compact", "--modes", "dense,sparse")
    assert main([*argv, "--colbert-pool", "2"]) == 2  # the flag, unlike the preset, is refused
    assert main(argv) == EXIT_OK
    options = json.loads((tmp_path / "dense" / "_manifest.json").read_text())["job"]["options"]
    assert (options["dense_storage"], options["colbert_storage"]) == ("int8", "float")

    capsys.readouterr()
    reuse = ["--reuse", str(tmp_path / "exact")]
    assert main(_args(inp, tmp_path / "v2", "--storage", "compact", *reuse)) == EXIT_FAILED
    assert "colbert_storage 'binary' (was 'float')" in capsys.readouterr().err
    assert not (tmp_path / "v2").exists()
