import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from pipeline.engine import cpu_attention, cpu_linear
from pipeline.engine.model import load_model
from pipeline.engine.random_model import SHAPES, model_config, parse_random_spec
from pipeline.errors import ModelLoadError


def test_random_specs():
    assert parse_random_spec("random:tiny") == "tiny"
    assert parse_random_spec("BAAI/bge-m3") is None
    with pytest.raises(ModelLoadError, match="unknown random model size"):
        parse_random_spec("random:huge")


def test_full_has_bge_m3_shape():
    from transformers import XLMRobertaModel

    config = model_config("full")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        24,
        1024,
        16,
    )
    assert (config.intermediate_size, config.vocab_size) == (4096, 250002)
    assert config.max_position_embeddings == 8194
    with torch.device("meta"):  # shape only, no 2 GB of weights
        model = XLMRobertaModel(config)
    params = sum(p.numel() for p in model.parameters())
    assert 560e6 < params < 575e6  # bge-m3 is ~568M parameters


def test_random_model_loads_through_flagembedding(tiny):
    # SDPA, or the fused oneDNN attention where fp32 runs through oneDNN (test_cpu_linear.py)
    onednn = cpu_linear.wanted(torch.device("cpu"), torch.float32)
    assert tiny.encoder.config._attn_implementation == (cpu_attention.NAME if onednn else "sdpa")
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    assert tiny.dense_dim == SHAPES["tiny"].hidden == tiny.colbert_dim
    assert tiny.unused_token_ids == (0, 1, 2, 3)  # <s> <pad> </s> <unk>
    assert (tiny.path / "colbert_linear.pt").is_file()
    assert tiny.describe()["random_weights"] is True


def test_cuda_asked_without_cuda(model_cache):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model("random:tiny", device="cuda", cache_dir=model_cache)


def test_directory_without_heads_is_refused(tmp_path, model_cache, tiny):
    for item in tiny.path.iterdir():
        if item.suffix != ".pt":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt"):
        load_model(str(tmp_path), device="cpu", cache_dir=model_cache)
    loaded = load_model(str(tmp_path), device="cpu", cache_dir=model_cache, need_heads=False)
    assert loaded.dense_dim == 64


def test_not_a_model(tmp_path, model_cache):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path), cache_dir=model_cache)
    with pytest.raises(ModelLoadError, match="not a hub name"):
        load_model("./no/such/dir/here", cache_dir=model_cache)


@pytest.mark.slow
def test_make_test_model_cli_writes_a_loadable_model(tmp_path):
    from FlagEmbedding import BGEM3FlagModel

    from pipeline.cli.main import main

    target = tmp_path / "m"
    assert main(["make-test-model", str(target), "--size", "tiny", "--seed", "3"]) == 0
    info = json.loads((target / "m3pipe_random_model.json").read_text())
    assert info["seed"] == 3 and info["random"] is True
    out = BGEM3FlagModel(str(target), use_fp16=False, devices="cpu").encode(
        ["hello"], return_sparse=True, return_colbert_vecs=True
    )
    assert out["dense_vecs"].shape == (1, 64)
    assert main(["make-test-model", str(target)]) == 2  # refuses to overwrite


def _silent_server() -> tuple[socket.socket, int]:
    """Accepts connections and never answers: a hub that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("hub", ["hangs", "refuses"])
def test_unreachable_hub_fails_fast_with_advice(tmp_path, hub):
    server, port = _silent_server()
    if hub == "refuses":
        server.close()  # nothing listens on the port any more
    script = textwrap.dedent(
        """
        import time
        from pathlib import Path
        from pipeline.engine.model import load_model
        from pipeline.errors import ModelLoadError
        started = time.monotonic()
        try:
            load_model("BAAI/not-cached-model", cache_dir=Path("."), hub_timeout=1)
        except ModelLoadError as exc:
            print("ERROR:", exc)
        print("SECONDS:", time.monotonic() - started)
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "0",
        "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[3]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    server.close()
    assert "ERROR:" in proc.stdout, proc.stderr[-2000:]
    assert "--model DIR" in proc.stdout and "random:small" in proc.stdout
    seconds = float(proc.stdout.split("SECONDS:")[1])
    assert seconds < 1 + 5  # hub_timeout plus slack, never a hang


@pytest.mark.slow
def test_random_models_are_byte_identical_between_builds(tmp_path, capfd, tiny):
    """A second build of the same size and seed in another directory (another machine) has
    the same bytes in every file as the session's, so the same fingerprint (a search index
    built from one cache is searchable with the other's model); nothing is printed on
    stdout while building."""
    from pipeline.engine.fingerprint import fingerprint_model_dir
    from pipeline.engine.random_model import write_random_model

    capfd.readouterr()
    first = tiny.path
    second = write_random_model(tmp_path / "b", "tiny")
    assert capfd.readouterr().out == ""
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert fingerprint_model_dir(first) == fingerprint_model_dir(second)


def test_the_random_tokenizer_collapses_runs_of_spaces(tiny):
    """Its normalizer replaces a regex, not the literal text " {2,}" (issue 28, item 9)."""
    tokenizer = tiny.tokenizer
    assert tokenizer("alpha    beta")["input_ids"] == tokenizer("alpha beta")["input_ids"]
    assert tokenizer("a {2,} b")["input_ids"] != tokenizer("a b")["input_ids"]


def test_a_cached_model_is_built_once_by_processes_asking_together(tmp_path):
    """Workers started together (and pytest-xdist's processes) ask for the same random model
    at once: one builds it, the others wait and find it (each used to build its own)."""
    from pipeline.engine.random_model import built_once

    builds: list[int] = []

    def build(directory):
        builds.append(1)
        time.sleep(0.3)  # long enough for the others to arrive meanwhile
        directory.mkdir()
        (directory / "done.json").write_text("{}")

    target = tmp_path / "models" / "m"
    found: list = []
    threads = [
        threading.Thread(target=lambda: found.append(built_once(target, "done.json", build)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [1] and found == [target] * 4 and (target / "done.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".m.lock", "m"]  # no staging left
