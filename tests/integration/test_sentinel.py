"""Redis Sentinel (issue 30, item 1): a master, a replica and three sentinels, real
redis-servers; submit, a worker, `status` and `wait` all given a `sentinel://` URL; the
master killed in the middle of the job and the replica promoted; every id exactly once at
the end. One setup's sentinels have a password of their own; another speaks only TLS
(Debian's redis-server, which is built with it: tests/integration/debian_redis.py)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import redis

from pipeline.jobs.store import JobStore
from pipeline.ops.embedded_redis import find_redis_server
from pipeline.ops.process_group import stop_process_groups
from tests.integration.conftest import Workers, free_port, run_cli, slow_stub, submit, wait_until
from tests.integration.debian_redis import debian_redis_server

MASTER = "m3master"


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a certificate it signed for 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def issue(cls, directory: Path) -> TlsFiles:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.cert_pem.write_to_path(str(files.ca))
        server.cert_chain_pems[0].write_to_path(str(files.cert))
        server.private_key_pem.write_to_path(str(files.key))
        return files

    def directives(self) -> dict[str, str]:
        """A redis-server (or sentinel) on TLS only, to its clients and its peers."""
        return {"tls-cert-file": str(self.cert), "tls-key-file": str(self.key),
                "tls-ca-cert-file": str(self.ca), "tls-auth-clients": "no",
                "tls-replication": "yes"}  # fmt: skip


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class SentinelSetup:
    """A master, a replica of it, and three sentinels watching it as MASTER."""

    def __init__(
        self, directory: Path, sentinel_password: str | None = None, tls: bool = False
    ) -> None:
        """`sentinel_password`: the sentinels' own `requirepass` (none by default); `tls`:
        every server and sentinel on TLS only."""
        self.directory = directory
        self.sentinel_password = sentinel_password
        self.tls = TlsFiles.issue(directory) if tls else None
        self.server, self.env = debian_redis_server() if tls else (find_redis_server(), None)
        self.processes: list[subprocess.Popen] = []
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    def _start(self, *args: str) -> None:
        log = open(self.directory / f"redis-{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [self.server, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        )

    def _listen(self, port: int) -> dict[str, str]:
        """Where a server or sentinel listens, as configuration directives."""
        if self.tls is None:
            return {"port": str(port)}
        return {"port": "0", "tls-port": str(port), **self.tls.directives()}

    def _own_dir(self, name: str) -> list[str]:
        """A server's own working directory: a replica's full sync writes a snapshot there
        (never into the test's directory, nor one server's read by another at its start)."""
        (self.directory / name).mkdir(exist_ok=True)
        return ["--dir", str(self.directory / name)]

    def _listen_args(self, port: int) -> list[str]:
        return [word for key, value in self._listen(port).items() for word in (f"--{key}", value)]

    def start(self) -> SentinelSetup:
        server = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--maxmemory-policy", "noeviction"]  # fmt: skip
        self._start(*self._listen_args(self.master), *server, *self._own_dir("master"))
        self._start(*self._listen_args(self.replica), *server, *self._own_dir("replica"),
                    "--replicaof", "127.0.0.1", str(self.master))  # fmt: skip
        for number, port in enumerate(self.sentinels):
            conf = self.directory / f"sentinel-{number}.conf"
            listen = "".join(f"{key} {value}\n" for key, value in self._listen(port).items())
            conf.write_text(
                listen + f"bind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
                + (
                    f"requirepass {self.sentinel_password}\n"
                    f"sentinel sentinel-pass {self.sentinel_password}\n"
                    if self.sentinel_password
                    else ""
                )
            )
            self._start(str(conf), "--sentinel")
        _wait(lambda: self.node(self.master).info("replication")["connected_slaves"] == 1,
              30, "the replica")  # fmt: skip
        for port in self.sentinels:  # each knows the others and the replica
            _wait(lambda port=port: self._knows_all(port), 30, "the sentinels")
        return self

    def _knows_all(self, port: int) -> bool:
        sentinel = self.sentinel(port)
        return len(sentinel.sentinel_sentinels(MASTER)) == 2 and (
            len(sentinel.sentinel_slaves(MASTER)) == 1
        )

    def node(self, port: int, password: str | None = None) -> redis.Redis:
        """A client of one server or sentinel of this setup."""
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(port=port, password=password, decode_responses=True,
                           socket_connect_timeout=2, **tls)  # fmt: skip

    def sentinel(self, port: int) -> redis.Redis:
        return self.node(port, self.sentinel_password)

    @property
    def url(self) -> str:
        listed = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinels)
        guarded = f"&sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        tls = f"&ssl=true&ssl_ca_certs={self.tls.ca}" if self.tls else ""
        return f"{listed}/0?master_name={MASTER}{guarded}{tls}"

    def master_port(self) -> int:
        return int(self.sentinel(self.sentinels[0]).sentinel_get_master_addr_by_name(MASTER)[1])

    def stop(self) -> None:
        stop_process_groups(self.processes, grace_seconds=5)


@pytest.fixture
def sentinel_setup(tmp_path, request) -> Iterator[SentinelSetup]:
    """The setup; a test marked `guarded_sentinels` gets sentinels behind a password, one
    marked `tls_sentinels` every server and sentinel on TLS only."""
    directory = Path(f"/tmp/m3s-{tmp_path.name[-8:]}")
    directory.mkdir(exist_ok=True)
    guarded = request.node.get_closest_marker("guarded_sentinels") is not None
    tls = request.node.get_closest_marker("tls_sentinels") is not None
    setup = SentinelSetup(directory, "s3ntry-pw" if guarded else None, tls=tls)
    try:
        yield setup.start()
    finally:
        setup.stop()


def long_records(count: int) -> list[dict[str, str]]:
    from pipeline.engine.synthetic_text import TextGenerator

    gen = TextGenerator(5)
    return [{"id": f"doc-{i:03d}", "text": gen.document(300)} for i in range(count)]


@dataclass
class Job:
    env: dict[str, str]
    store: JobStore
    records: list[dict[str, str]]
    job_id: str


@contextlib.contextmanager
def job_under_way(tmp_path, setup: SentinelSetup, cli_env, stub: str) -> Iterator[Job]:
    """A 24-document job in 8 shards of ~1.4 s (the stand-in encoder), submitted through the
    sentinels, one worker on it, 2 shards done; the worker stops when the block ends."""
    # A short visibility timeout: a delivery whose record reached the replica while its
    # worker lost the message with its connection (kombu's restore had no primary to write
    # to) waits in `unacked` until then, and a worker's sweep restores it (seen in CI).
    env = {**cli_env, "M3PIPE_BROKER_URL": setup.url, "M3PIPE_VISIBILITY_TIMEOUT": "20",
           "M3PIPE_RESTORE_INTERVAL": "2", "M3PIPE_PLANNED_TOKENS_PER_SECOND": "3000"}  # fmt: skip
    slow_stub(env, stub, 3000)
    store = JobStore.connect(setup.url)
    records = long_records(24)
    job_id = submit(tmp_path, env, records, "--shard-docs", "3")
    workers = Workers(env, tmp_path, store)
    try:
        workers.start(1)
        wait_until(lambda: store.status(job_id).shards.done >= 2, timeout=180)
        yield Job(env, store, records, job_id)
    finally:
        workers.stop_all()


def assert_every_id_once(tmp_path, records) -> None:
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [r["id"] for r in records]


@pytest.mark.guarded_sentinels
def test_a_failover_mid_job_loses_nothing_every_id_once(
    tmp_path, sentinel_setup, cli_env, stub_built
):
    """Through sentinels with a password of their own (`&sentinel_password=` reaches the job
    store's Sentinel client and kombu's): the primary killed mid-job, the replica promoted,
    every id once. Without the password, one line at once that says where it goes (redis-py
    alone retried for ~50 s, then printed a 3 KB "No master found")."""
    with job_under_way(tmp_path, sentinel_setup, cli_env, stub_built) as job:
        assert sentinel_setup.master_port() == sentinel_setup.master
        # The master dies (kill -9): what it acknowledged had reached the replica, which
        # the sentinels promote. (A forced `SENTINEL FAILOVER` while the old master still
        # takes writes loses the writes of the switch-over: the next test.)
        sentinel_setup.processes[0].kill()
        _wait(lambda: sentinel_setup.master_port() == sentinel_setup.replica, 60, "failover")
        assert job.store.status(job.job_id).shards.done < 8  # the failover came mid-job
        waited = run_cli("wait", job.job_id, "--timeout", "240", env=job.env, timeout=260)
        if waited.returncode == 1 and "m3pipe repair" in waited.stderr:
            # The kill can lose what the primary had not yet sent its replica: the record of
            # a delivery it had just made (kombu's `unacked` entry), when the worker's
            # connection broke before the shard ran. `wait` names the shard (queued or running
            # with no message anywhere) and the one documented command sends it again.
            repaired = run_cli("repair", job.job_id, env=job.env)
            assert repaired.returncode == 0, repaired.stderr[-2000:]
            waited = run_cli("wait", job.job_id, "--timeout", "240", env=job.env, timeout=260)
        assert waited.returncode == 0, waited.stderr[-2000:]
        status = run_cli("status", job.job_id, env=job.env)
        assert status.returncode == 0 and "completed" in status.stdout
    # The job state followed the new master, and the output holds every id once.
    assert sentinel_setup.node(sentinel_setup.replica).info("replication")["role"] == "master"
    assert_every_id_once(tmp_path, job.records)
    bare = {**job.env, "M3PIPE_BROKER_URL": sentinel_setup.url.split("&sentinel_password")[0]}
    refused = run_cli("status", job.job_id, env=bare, timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "the sentinels refused no password" in refused.stderr
    assert "&sentinel_password=PW" in refused.stderr and len(refused.stderr) < 400


@pytest.mark.tls_sentinels
def test_a_failover_that_loses_writes_is_repaired_by_one_command(
    tmp_path, sentinel_setup, cli_env, stub_built
):
    """A forced failover while the worker writes to the old primary: what it wrote there
    between the replica's promotion and its own demotion is lost. `m3pipe repair` marks
    done the shards whose parts are written and sends the rest again; the job completes.
    Every server and sentinel speaks TLS only (`&ssl=true&ssl_ca_certs=` reaches the job
    store's Sentinel client and kombu's, for the sentinels and the master); without the
    TLS options, or without the CA, one line at once that says why."""
    with job_under_way(tmp_path, sentinel_setup, cli_env, stub_built) as job:
        sentinel_setup.sentinel(sentinel_setup.sentinels[0]).execute_command(
            "SENTINEL", "FAILOVER", MASTER
        )
        _wait(lambda: sentinel_setup.master_port() == sentinel_setup.replica, 60, "failover")
        # The old primary is demoted (its clients cut off) once the sentinels reconfigure it.
        _wait(lambda: sentinel_setup.node(sentinel_setup.master).info("replication")["role"]
              == "slave", 60, "the old primary's demotion")  # fmt: skip
        repaired = run_cli("repair", job.job_id, env=job.env)
        assert repaired.returncode == 0, repaired.stderr[-2000:]
        assert "marked done" in repaired.stderr and "sent again" in repaired.stderr
        waited = run_cli("wait", job.job_id, "--timeout", "240", env=job.env, timeout=260)
        assert waited.returncode == 0, waited.stderr[-2000:] + repaired.stderr
    assert_every_id_once(tmp_path, job.records)
    plain = {**job.env, "M3PIPE_BROKER_URL": sentinel_setup.url.split("&ssl=")[0]}
    refused = run_cli("status", job.job_id, env=plain, timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "no sentinel answered (sentinels that speak TLS take &ssl=true" in refused.stderr
    unknown_ca = {**job.env, "M3PIPE_BROKER_URL": sentinel_setup.url.split("&ssl_ca_certs")[0]}
    refused = run_cli("status", job.job_id, env=unknown_ca, timeout=60)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "certificate verify failed" in refused.stderr, refused.stderr
