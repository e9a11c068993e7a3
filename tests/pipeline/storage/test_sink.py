import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.engine.embedder import EmbedEngine
from pipeline.storage.sink import part_name, remove_stale_temp_files, write_shard
from pipeline.testing.corpora import documents
from schemas.options import EncodeOptions, Mode, StorageDtype
from schemas.output import output_schema, read_output_metadata
from schemas.vector_layout import colbert_vectors

CONTRACT = {
    "id": pa.string(),
    "chunk": pa.int32(),
    "dense": pa.list_(pa.float16(), 64),
    "sparse_indices": pa.list_(pa.int32()),
    "sparse_values": pa.list_(pa.float32()),
    "colbert": pa.list_(pa.binary(128)),  # 64 float16s a vector (schemas/vector_layout.py)
    "n_tokens": pa.int32(),
    "truncated": pa.bool_(),
}


@pytest.mark.parametrize("chunked", [False, True])
def test_written_schema_is_exactly_the_contract(tiny, tmp_path, chunked):
    options = EncodeOptions(max_length=64, long_docs="chunk" if chunked else "truncate")
    table = EmbedEngine(tiny, options).encode(documents(["alpha beta", "gamma"])).table
    written = write_shard(table, tmp_path / part_name(0))
    assert written.local_path == tmp_path / part_name(0)
    schema = pq.read_schema(written.local_path)
    expected = {k: v for k, v in CONTRACT.items() if chunked or k != "chunk"}
    assert schema.names == list(expected)
    for name, arrow_type in expected.items():
        assert schema.field(name).type == arrow_type, name
    meta = read_output_metadata(schema)
    assert meta["model"] == "random:tiny" and meta["random_weights"] is True
    assert (meta["dense_dim"], meta["dtype"], meta["max_length"]) == (64, "float16", 64)
    assert meta["model_fingerprint"]
    assert meta["output_format"] == 2
    assert schema.field("colbert").metadata == {
        b"m3pipe.vector": b"float16 little-endian",
        b"m3pipe.dim": b"64",
    }
    group = pq.ParquetFile(written.local_path).metadata.row_group(0)
    codecs = {
        group.column(i).path_in_schema: group.column(i).compression
        for i in range(group.num_columns)
    }
    assert codecs["id"] == codecs["dense.list.element"] == "ZSTD"
    assert codecs["sparse_values.list.element"] == "ZSTD"
    assert codecs["colbert.list.element"] == "UNCOMPRESSED"
    offsets, vectors = colbert_vectors(pq.read_table(written.local_path).column("colbert"),
                                       schema.field("colbert"))  # fmt: skip
    assert vectors.dtype == np.float16 and vectors.shape == (offsets[-1], 64)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-3)
    assert list(np.diff(offsets)) == [n - 1 for n in table.column("n_tokens").to_pylist()]


def test_float32_storage_schema():
    schema = output_schema((Mode.DENSE, Mode.COLBERT), StorageDtype.FLOAT32, 8, 4)
    assert schema.names == ["id", "dense", "colbert", "n_tokens", "truncated"]
    assert schema.field("dense").type == pa.list_(pa.float32(), 8)
    assert schema.field("colbert").type == pa.list_(pa.binary(16))
    assert schema.field("colbert").metadata[b"m3pipe.vector"] == b"float32 little-endian"


def test_part_names_are_deterministic():
    assert part_name(0) == "part-00000.parquet"
    assert part_name(123) == "part-00123.parquet"
    with pytest.raises(ValueError):
        part_name(-1)


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    table = pa.table({"id": ["a", "b"]})

    def write_then_fail(data, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_shard(table, tmp_path / "part-00000.parquet")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_only_a_hidden_temp_file(tmp_path):
    """SIGKILL in the middle of a write: no file under the final name, temp cleaned later."""
    script = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow as pa, pyarrow.parquet as pq
        from pipeline.storage.sink import write_shard
        def write_then_die(data, where, **kwargs):
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a file")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        pq.write_table = write_then_die
        write_shard(pa.table({{"id": ["a"]}}), {str(tmp_path / "part-00000.parquet")!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    names = [p.name for p in tmp_path.iterdir()]
    assert "part-00000.parquet" not in names
    assert len(names) == 1 and names[0].startswith(".part-00000.parquet.tmp-")
    assert remove_stale_temp_files(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path):
    path = tmp_path / "part-00000.parquet"
    write_shard(pa.table({"id": ["old"]}), path)
    write_shard(pa.table({"id": ["new", "rows"]}), path)
    assert pq.read_table(path).column("id").to_pylist() == ["new", "rows"]
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]
