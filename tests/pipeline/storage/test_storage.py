"""pipeline/storage/location.py and the output layer on object stores: local, fsspec memory:// and
S3 (a local moto server speaking real S3 over HTTP)."""

import gzip
import io
import json
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.errors import InputError, OutputDirError, StorageError
from pipeline.exit_codes import EXIT_REJECTS
from pipeline.inputs.readers.formats import detect_format, read_records
from pipeline.jobs.resume import previous_spec, read_shard_file, shard_footer
from pipeline.storage import location as location_module
from pipeline.storage import s3_listing
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import RejectLog, part_entries, prepare_output_dir
from pipeline.storage.sink import write_shard
from schemas.document import Reject


def test_local_paths_become_absolute_and_children_are_plain_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = open_location("out")
    assert out.is_local and out.uri == str(tmp_path / "out") == out.url
    assert (out / "part-00000.parquet").local_path == tmp_path / "out" / "part-00000.parquet"
    assert open_location(f"file://{tmp_path}/out").uri == out.uri
    for bad in ("", "..", "a/../b", "/abs", "a//b"):
        with pytest.raises(ValueError, match="plain relative name"):
            out / bad


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/out?access_key=AKIA&secret_key=shh",
        "s3://bucket/out?session_token=tok",
        "s3://user:password@bucket/out",
        "abfs://container@account.dfs.core.windows.net/out?account_key=k",
    ],
)
def test_credentials_in_a_url_are_refused(url):
    # The output URL is stored in Redis, _job.json and logs: a key there would leak.
    with pytest.raises(StorageError, match="through the environment"):
        open_location(url)


def test_a_scheme_nothing_reads_is_a_clear_error():
    with pytest.raises(StorageError, match="no filesystem for nosuch:// URLs"):
        open_location("nosuch://bucket/out")


def test_fsspec_schemes_work_through_pyarrow():
    # memory:// has no pyarrow filesystem: it goes through fsspec, as gcsfs or adlfs would.
    out = open_location("memory://m3pipe-test/out")
    assert not out.is_local and out.uri == "memory://m3pipe-test/out"
    (out / "a.json").write_bytes(b"{}")
    (out / "sub" / "b.txt").write_bytes(b"bee")
    assert [loc.name for loc in out.children("*.json")] == ["a.json"]
    assert [loc.uri for loc in out.walk_files()] == [
        "memory://m3pipe-test/out/a.json",
        "memory://m3pipe-test/out/sub/b.txt",
    ]
    assert (out / "sub" / "b.txt").read_text() == "bee"
    (out / "a.json").delete()
    (out / "a.json").delete()  # a missing file is fine
    assert not (out / "a.json").exists()


def test_s3_round_trip_listing_and_deletes(s3):
    out = open_location(s3.url("out"))
    assert out.uri == f"s3://{s3.name}/out" and not out.exists()
    (out / "part-00001.parquet").write_bytes(b"1")
    (out / "part-00000.parquet").write_bytes(b"0")
    (out / "_manifest.json").write_bytes(b"{}")
    assert out.is_dir()
    assert [p.name for p in out.children("part-*.parquet")] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert (out / "part-00001.parquet").size() == 1
    (out / "part-00001.parquet").delete()
    assert s3.keys("out") == ["_manifest.json", "part-00000.parquet"]


def test_an_s3_listing_comes_a_page_at_a_time_and_names_what_pyarrow_names(s3, monkeypatch):
    monkeypatch.setattr(s3_listing, "PAGE_KEYS", 2)
    keys = [f"out/part-{n:05d}.parquet" for n in range(5)]
    keys += ["out/_manifest.json", "out/_letters/shard-00001.json", "out/sub/part-00009.parquet"]
    for key in keys:
        s3.put(key, b"x")
    s3.put("outer/part-00007.parquet", b"x")  # shares the prefix's text, not its directory
    out = open_location(s3.url("out"))
    for pattern in ("*", "part-*.parquet", "_*"):
        paged = sorted(out.child_names(pattern))
        assert paged == [loc.name for loc in out.children(pattern)]  # pyarrow's listing
    assert sorted(out.child_names()) == ["_manifest.json"] + [k[4:] for k in keys[:5]]
    # Paged, not listed whole: an object put after the first page is read still shows.
    names = out.child_names("part-*.parquet")
    assert next(names) == "part-00000.parquet"
    s3.put("out/part-99999.parquet", b"x")
    assert list(names)[-1] == "part-99999.parquet"
    assert list(open_location(f"s3://{s3.name}-missing/out").child_names()) == []


def test_without_boto3_an_s3_listing_comes_from_pyarrow(s3, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` meets uninstalled
    s3_listing.paged_s3_client.cache_clear()
    try:
        s3.put("out/part-00000.parquet", b"x")
        s3.put("out/part-00001.parquet", b"x")
        names = open_location(s3.url("out")).child_names("part-*.parquet")
        assert sorted(names) == ["part-00000.parquet", "part-00001.parquet"]
        assert "pip install 'm3pipe[s3]'" in caplog.text
    finally:
        s3_listing.paged_s3_client.cache_clear()


def test_an_endpoint_in_the_url_is_kept_for_other_processes(s3, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    url = f"s3://{s3.name}/out?endpoint_override={s3.server.endpoint}"
    out = open_location(url)
    assert out.uri == f"s3://{s3.name}/out" and out.url == url
    (out / "x.json").write_bytes(b"{}")
    assert s3.get("out/x.json") == b"{}"
    assert open_location(out.url).path == out.path  # what a worker reopens from the job spec
    assert list(out.child_names()) == ["x.json"]  # the paged listing reaches the same store


def test_output_on_a_missing_bucket_is_refused_up_front(s3):
    with pytest.raises(OutputDirError, match="does not exist"):
        prepare_output_dir(f"s3://{s3.name}-missing/out")


def test_earlier_output_in_a_prefix_is_refused_then_cleared(s3):
    s3.put("out/part-00000.parquet", b"old")
    s3.put("out/_manifest.json", b"{}")
    with pytest.raises(OutputDirError, match="already holds output"):
        prepare_output_dir(s3.url("out"))
    prepare_output_dir(s3.url("out"), overwrite=True)
    assert s3.keys("out") == []
    s3.put("out/notes.txt", b"not ours")  # a prefix of someone else's objects: never mixed
    with pytest.raises(OutputDirError, match=r"did not write \(notes.txt\)"):
        prepare_output_dir(s3.url("out"), overwrite=True)
    assert s3.keys("out") == ["notes.txt"]


def test_s3_part_file_is_one_put_and_a_failed_write_leaves_no_object(s3, monkeypatch):
    table = pa.table({"id": ["a", "b"]})
    facts = shard_footer({"digest": "d", "rows": 2})
    written = write_shard(table.replace_schema_metadata(facts), s3.url("out/p"))
    assert pq.read_table(io.BytesIO(s3.get("out/p"))).column("id").to_pylist() == ["a", "b"]
    assert read_shard_file(written).facts == {"digest": "d", "rows": 2}

    def write_then_fail(data, where, **kwargs):
        where.write(b"PAR1 partial bytes")
        raise OSError("encoder failed half-way")

    monkeypatch.setattr(pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="half-way"):
        write_shard(table, s3.url("out/q"))
    # Streaming straight to S3 would have committed the partial bytes when the failed
    # write's stream was closed; the put happens only once the whole file is built.
    assert s3.keys("out") == ["p"]


def test_rejects_reach_s3_whole_when_closed(s3):
    with RejectLog(s3.url("out")) as rejects:
        for line in range(3):
            rejects.add(Reject(source="in.jsonl", line=line + 1, reason="bad"))
        assert s3.keys("out") == []  # nothing visible before close
    lines = s3.get("out/_rejects.jsonl").decode().splitlines()
    assert [json.loads(x)["line"] for x in lines] == [1, 2, 3]


def test_a_log_streams_to_s3_in_chunks_and_one_cut_short_leaves_no_object(s3, monkeypatch):
    monkeypatch.setattr(location_module, "UPLOAD_CHUNK_BYTES", 1000)
    with RejectLog(s3.url("out")) as rejects:
        for line in range(500):  # ~40 kB: dozens of chunks
            rejects.add(Reject(source="in.jsonl", line=line + 1, reason="bad"))
    lines = s3.get("out/_rejects.jsonl").decode().splitlines()
    assert [json.loads(x)["line"] for x in lines] == list(range(1, 501))

    class FailingHalfway(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 3000:
                raise OSError(5, "Input/output error")
            return super().read(size)

    with pytest.raises(OSError, match="Input/output"):
        open_location(s3.url("out/_shards.jsonl")).upload(FailingHalfway(b"x" * 10_000))
    assert s3.keys("out") == ["_rejects.jsonl"]  # the 3000 bytes sent were not left there


def test_every_reader_reads_from_s3(s3, tmp_path):
    s3.put("in/a.jsonl.gz", gzip.compress(b'{"id": "j1", "text": "one"}\n{"id": 2}\n'))
    s3.put("in/b.csv", b"id,text\nc1,two\n")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [7], "text": ["three"]}), buffer)
    s3.put("in/c.parquet", buffer.getvalue())
    s3.put("in/docs/z.txt", b"four")
    s3.put("in/docs/sub/y.txt", b"five")
    s3.put("in/docs/skip.bin", b"not text")

    def read(key):
        items = read_records(s3.url(key))
        return [(type(i.result).__name__, getattr(i.result, "id", None)) for i in items]

    assert read("in/a.jsonl.gz") == [("Document", "j1"), ("Reject", None)]
    assert read("in/b.csv") == [("Document", "c1")]
    assert read("in/c.parquet") == [("Document", "7")]
    assert detect_format(s3.url("in/docs")) == "txt"
    assert read("in/docs") == [("Document", "z.txt"), ("Document", "sub/y.txt")]
    reject = list(read_records(s3.url("in/a.jsonl.gz")))[1].result
    assert reject.source == s3.url("in/a.jsonl.gz")  # sources name the object
    with pytest.raises(InputError, match="input not found"):
        detect_format(s3.url("in/missing.jsonl"))


def test_m3pipe_encode_reads_and_writes_s3(s3, tiny):
    records = [{"id": f"d{i}", "text": f"text number {i}"} for i in range(7)] + [{"id": "bad"}]
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    source = s3.put("in/corpus.jsonl", body)
    args = ["encode", source, "--out", s3.url("out"), "--model", "random:tiny", "-q"]
    assert main([*args, "--shard-docs", "3"]) == EXIT_REJECTS
    assert s3.keys("out") == [
        "_manifest.json",
        "_rejects.jsonl",
        "_shards.jsonl",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    s3fs = s3.fs
    table = pq.read_table(f"{s3.name}/out", filesystem=s3fs)  # the prefix as one dataset
    assert sorted(table.column("id").to_pylist()) == sorted(f"d{i}" for i in range(7))
    manifest = json.loads(s3.get("out/_manifest.json"))
    assert manifest["counts"]["rows"] == 7 and manifest["counts"]["rejected"] == 1
    assert [f["bytes"] for f in part_entries(s3.url("out"))] == [
        s3fs.get_file_info(f"{s3.name}/out/{f['name']}").size for f in part_entries(s3.url("out"))
    ]
    assert not any(".tmp" in key for key in s3.keys("out"))


def test_previous_spec_reads_job_file_from_s3(s3):
    from schemas.job import JobSpec

    spec = JobSpec(
        job_id="job-1",
        inputs=[s3.url("in.jsonl")],
        out=s3.url("out"),
        model="random:tiny",
        options={},
        queue="m3pipe",
        shard_docs=10,
        shard_bytes=4096,
        max_queued=2,
        created_at=0.0,
    )
    s3.put("out/_job.json", spec.model_dump_json().encode())
    assert previous_spec(s3.url("out")) == spec


def test_an_unreachable_store_is_a_clear_error_before_anything_starts(monkeypatch):
    # Nothing listens on port 1: the first check says so, rather than a traceback.
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}.items():
        monkeypatch.setenv(key, value)
    url = "s3://bucket/{}?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    # The same store with one try a request: the AWS SDK's retries (~6 s a call, not
    # tunable through a URL) are not what is tested here.
    one_try = pafs.S3FileSystem(
        endpoint_override="127.0.0.1:1", scheme="http", region="us-east-1",
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )  # fmt: skip
    monkeypatch.setattr(location_module, "filesystem_of", lambda base, _: (one_try, base[5:]))
    with pytest.raises(StorageError, match="cannot reach s3://bucket/out"):
        prepare_output_dir(url.format("out"))
    with pytest.raises(StorageError, match=r"cannot reach s3://bucket/in\.jsonl"):
        detect_format(url.format("in.jsonl"))


@pytest.mark.slow
def test_parts_keep_dictionaries_and_statistics_for_scalar_columns_only(tmp_path):
    vectors = pa.array([[0.5, 0.25], [0.125, 1.0]], type=pa.list_(pa.float32(), 2))
    table = pa.table({"id": ["a", "b"], "dense": vectors, "n_tokens": pa.array([3, 4], pa.int32())})
    write_shard(table, tmp_path / "part-00000.parquet")
    meta = pq.ParquetFile(tmp_path / "part-00000.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert columns["id"].has_dictionary_page and columns["id"].is_stats_set
    assert columns["n_tokens"].statistics.min == 3
    dense = columns["dense.list.element"]
    assert not dense.has_dictionary_page and not dense.is_stats_set
    assert pq.read_table(tmp_path / "part-00000.parquet").equals(table)
