"""`--resume`: only shards without a good file are sent again; the spec must not change.

Real Redis, the real shard runner in-process (random:tiny on CPU), real Parquet files.
"""

from __future__ import annotations

import hashlib
import json
import time

import pyarrow.dataset as ds
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ResumeError
from pipeline.jobs.keys import job_key
from pipeline.jobs.resume import check_same_job, documents_digest, read_shard_file
from pipeline.runtime.shard_runner import run_shard
from pipeline.runtime.worker_models import WorkerModels
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.storage.output_dir import JOB_FILE, MANIFEST, part_entries
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.document import Document, storable
from schemas.job import JobSpec, JobState, Task
from schemas.options import EncodeOptions

OPTIONS = EncodeOptions(max_length=128)


def write_corpus(path, count=50, changed: dict[int, str] | None = None):
    changed = changed or {}
    lines = [{"id": f"d{i:02d}", "text": changed.get(i, f"document {i}")} for i in range(count)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def request(tmp_path, inp, **changes) -> SubmitRequest:
    fields = dict(
        inputs=[inp], out=tmp_path / "out", model="random:tiny", options=OPTIONS, queue="q",
        limits=ShardLimits(items=10, bytes=1 << 20, tokens=100_000), max_queued=100,
    )  # fmt: skip
    fields.update(changes)
    return SubmitRequest(**fields)


@pytest.fixture
def runtime(store, tiny):
    models = WorkerModels(specs={Task.EMBED: "random:tiny"}, loader=lambda task, spec: tiny)
    return WorkerRuntime(models=models, store=store, hostname="t@host")


def submit(req, store):
    sent = []
    result = submit_job(req, store, lambda message, queue, priority: sent.append(message))
    return result, sent


def plain_digest(documents) -> str:
    """The digest's definition, as written before its fast path."""
    each = b"".join(
        hashlib.sha256(doc.model_dump_json().encode("utf-8") + b"\n").digest() for doc in documents
    )
    return hashlib.sha256(each).hexdigest()


storable_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from('"\\/\x7f\b\f\n\r\t\x01\x1f')),
    min_size=1,
).filter(lambda t: storable(t) and t.strip())


@given(st.lists(st.tuples(storable_text, storable_text, st.booleans()), max_size=5))
def test_digest_is_sha256_of_each_documents_json_digest(rows):
    """Every escape the fast path writes is pydantic's: resumed jobs keep their digests."""
    docs = [Document(id=i, text=t, fields={"k": t} if kept else None) for i, t, kept in rows]
    assert documents_digest(docs) == plain_digest(docs)


def test_digest_covers_ids_texts_and_fields():
    base = [Document(id="a", text="x"), Document(id="b", text="y", fields={"k": "1"})]
    assert documents_digest(base) == documents_digest(list(base))
    for other in (
        [Document(id="a", text="x!"), base[1]],
        [Document(id="a2", text="x"), base[1]],
        [base[0], Document(id="b", text="y", fields={"k": "2"})],
        [base[1], base[0]],
    ):
        assert documents_digest(other) != documents_digest(base)


def test_resume_sends_only_shards_without_a_good_file(tmp_path, store, runtime):
    inp = write_corpus(tmp_path / "in.jsonl")
    first, sent = submit(request(tmp_path, inp), store)
    assert first.shards == 5 and len(sent) == 5
    for message in (sent[0], sent[1], sent[3]):  # the run stops after three shards
        run_shard(message, runtime)
    store.cancel(first.job_id)
    out = tmp_path / "out"
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert sorted(kept) == ["part-00000.parquet", "part-00001.parquet", "part-00003.parquet"]

    # Without --resume the directory is refused; with it, shards 2 and 4 are sent again.
    with pytest.raises(Exception, match="already holds output"):
        submit(request(tmp_path, inp), store)
    resumed, sent = submit(request(tmp_path, inp, resume=True, queue="other"), store)
    assert resumed.job_id == first.job_id and resumed.skipped == 3
    assert [m.shard for m in sent] == [2, 4]
    status = store.status(first.job_id)
    assert status.state is JobState.QUEUED and status.shards.done == 3
    assert status.documents_done == 30 and status.tokens_done > 0
    assert not (out / MANIFEST).exists()
    run_shard(sent[0], runtime)
    # Speed and ETA count only what this run encoded, not the 3 shards found done.
    store.redis.hset(job_key(first.job_id), "started_at", time.time() - 100)
    status = store.status(first.job_id)
    encoded = store.shard_infos(first.job_id)[2]["tokens"]
    elapsed = time.time() - status.started_at
    assert status.tokens_per_second * elapsed == pytest.approx(encoded, rel=0.05)
    assert status.eta_seconds == pytest.approx(elapsed, rel=0.2)  # 10 left, 10 encoded
    run_shard(sent[1], runtime)

    assert store.state(first.job_id) is JobState.COMPLETED
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")
            if p.name in kept} == kept  # fmt: skip
    ids = ds.dataset(out, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"d{i:02d}" for i in range(50)]
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(part_entries(out)) == 5 and manifest["counts"]["rows"] == 50
    assert manifest["model"]["model"] == "random:tiny"
    assert manifest["counts"]["tokens"] == sum(f["tokens"] for f in part_entries(out))


def test_resume_redoes_shards_whose_documents_changed_and_drops_extra_files(
    tmp_path, store, runtime
):
    inp = write_corpus(tmp_path / "in.jsonl")
    first, sent = submit(request(tmp_path, inp), store)
    for message in sent:
        run_shard(message, runtime)
    assert store.state(first.job_id) is JobState.COMPLETED
    out = tmp_path / "out"
    facts = read_shard_file(out / "part-00001.parquet").facts
    assert (facts["shard"], facts["documents"], facts["rows"]) == (1, 10, 10)

    # The corpus lost its last 15 records and one text changed: shard 1 is redone, shard 4
    # (now 5 documents) too, and no shard 5 exists any more.
    (out / "part-00005.parquet").write_bytes((out / "part-00000.parquet").read_bytes())
    write_corpus(inp, count=45, changed={12: "edited"})
    store.redis.flushall()  # and Redis lost everything: the files alone decide
    resumed, sent = submit(request(tmp_path, inp, resume=True), store)
    assert [m.shard for m in sent] == [1, 4] and resumed.skipped == 3
    assert not (out / "part-00005.parquet").exists()
    assert not (out / "part-00001.parquet").exists()  # never visible with old content
    for message in sent:
        run_shard(message, runtime)
    table = ds.dataset(out, format="parquet").to_table(columns=["id"])
    assert sorted(table.column("id").to_pylist()) == [f"d{i:02d}" for i in range(45)]


def test_a_stale_message_from_before_a_resume_is_not_run(tmp_path, store, runtime):
    """Messages of a cancelled submission stay queued; after a resume with changed input,
    the old message of a changed shard must not write the old documents."""
    inp = write_corpus(tmp_path / "in.jsonl")
    first, old = submit(request(tmp_path, inp), store)
    store.cancel(first.job_id)
    write_corpus(inp, changed={3: "edited text"})  # shard 0 changes, the others do not
    _, new = submit(request(tmp_path, inp, resume=True), store)
    out = tmp_path / "out"
    assert run_shard(old[0], runtime).detail == "stale message"
    assert not (out / "part-00000.parquet").exists()
    for message in new:
        run_shard(message, runtime)
    # Once done, a shard keeps no digest (less job state per shard): any later
    # message of it, stale or duplicate, finds it ended and writes nothing.
    assert {run_shard(message, runtime).detail for message in old} == {"already ended"}
    assert new[0].ref is not None  # a plain JSONL input: shards by reference
    # ... so part 0 still holds the new documents, not the stale message's.
    assert read_shard_file(out / "part-00000.parquet").facts["digest"] == new[0].ref.digest
    assert store.state(first.job_id) is JobState.COMPLETED


def test_resume_refuses_other_settings_a_running_job_and_an_empty_directory(tmp_path, store):
    inp = write_corpus(tmp_path / "in.jsonl")
    first, _ = submit(request(tmp_path, inp), store)
    with pytest.raises(ResumeError, match="still queued"):
        submit(request(tmp_path, inp, resume=True), store)
    store.cancel(first.job_id)
    changed = request(tmp_path, inp, resume=True, model="random:small", options=EncodeOptions())
    with pytest.raises(ResumeError, match=r"model 'random:small' \(was 'random:tiny'\); options"):
        submit(changed, store)
    with pytest.raises(ResumeError, match=f"no {JOB_FILE}"):
        submit(request(tmp_path, inp, resume=True, out=tmp_path / "fresh"), store)
    spec = JobSpec.model_validate_json((tmp_path / "out" / JOB_FILE).read_text())
    check_same_job(spec, spec.model_copy(update={"queue": "x", "max_queued": 3}))


def test_shards_by_reference_write_what_inline_shards_write(tmp_path, store, runtime):
    inp = write_corpus(tmp_path / "in.jsonl", count=30)
    _, refs = submit(request(tmp_path, inp), store)
    _, texts = submit(request(tmp_path, inp, out=tmp_path / "inline", inline_shards=True), store)
    assert all(m.ref is not None and not m.documents for m in refs)
    assert all(m.ref is None and len(m.documents) == 10 for m in texts)
    for message in refs + texts:
        assert run_shard(message, runtime).state.value == "done"
    tables = [ds.dataset(tmp_path / d, format="parquet").to_table() for d in ("out", "inline")]
    assert tables[0].num_rows == 30 and tables[0].equals(tables[1])


def test_a_reference_to_a_changed_input_fails_its_shard(tmp_path, store, runtime):
    from pipeline.inputs.references import InputChanged

    inp = write_corpus(tmp_path / "in.jsonl", count=20)
    _, sent = submit(request(tmp_path, inp), store)
    run_shard(sent[0], runtime)
    write_corpus(inp, count=20, changed={15: "edited"})  # in shard 1, after submit
    with pytest.raises(InputChanged, match="no longer hold the documents accepted at submit"):
        run_shard(sent[1], runtime)  # workers/tasks.py fails it for good: a PermanentError
    assert not (tmp_path / "out" / "part-00001.parquet").exists()


def test_the_worker_metric_shows_when_its_shard_started_and_clears_it(
    tmp_path, store, runtime, monkeypatch
):
    from pipeline.tasks import task_kind

    _, sent = submit(request(tmp_path, write_corpus(tmp_path / "in.jsonl", count=10)), store)
    gauge = "m3pipe_shard_started_timestamp_seconds"
    seen = []
    embed = type(task_kind(Task.EMBED))
    real = embed.compute_stream

    def compute_stream(self, engine, pieces, keep_fields=(), progress=None):
        seen.append(runtime.metrics.registry.get_sample_value(gauge))
        return real(self, engine, pieces, keep_fields, progress)

    monkeypatch.setattr(embed, "compute_stream", compute_stream)
    before = time.time()
    run_shard(sent[0], runtime)
    assert before - 1 <= seen[0] <= time.time()  # what M3pipeWorkerWedged ages
    assert runtime.metrics.registry.get_sample_value(gauge) == 0


def test_a_reference_is_read_only_under_the_input_roots(tmp_path, store, runtime):
    from pipeline.errors import InputNotAllowed

    (tmp_path / "data").mkdir()
    inp = write_corpus(tmp_path / "data" / "in.jsonl", count=10)
    _, sent = submit(request(tmp_path, inp), store)
    runtime.input_roots = (str(tmp_path / "elsewhere"),)  # a forged job's input is not here
    with pytest.raises(InputNotAllowed, match="outside the allowed roots"):
        run_shard(sent[0], runtime)
    runtime.input_roots = (str(tmp_path / "data"),)
    assert run_shard(sent[0], runtime).state.value == "done"
