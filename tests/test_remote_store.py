"""Stores on object storage, against a real S3 HTTP endpoint on localhost (moto's server)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import pytest
import torch

from saebench.cli import main
from store import remote
from store.errors import UserError
from store.reader import open_store
from store.streaming import StoreSource

pytestmark = pytest.mark.usefixtures("one_thread")

BUCKET = "stores"
VICTIM = "act-000002.parquet"


def upload(client, store: Path, key: str) -> str:
    """Upload a local store (its .duckdb file and .shards/ folder, same layout); its URL."""
    client.upload_file(str(store), BUCKET, key)
    for f in sorted(store.with_suffix(".shards").iterdir()):
        client.upload_file(str(f), BUCKET, f"{key.removesuffix('.duckdb')}.shards/{f.name}")
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def s3(tiny_store, tmp_path_factory):
    """moto's S3 server on a free port, the environment pointing at it, the tiny store on it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SAEBENCH_CACHE": str(tmp_path_factory.mktemp("cache")),
        }
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setattr(remote, "BACKOFF_S", 0.01)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        url = upload(client, tiny_store, "good/tiny.duckdb")
        yield {"client": client, "port": port, "url": url, "local": tiny_store}
    server.stop()


def _batches(reader, n: int = 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Groups of 3 chunks, several per epoch, and n batches run into the second epoch.
    source = StoreSource(reader, "train", buffer_tokens=1024, in_memory=False)
    it = source.batches(256, seed=5, with_grads=True)
    return [next(it) for _ in range(n)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.view(torch.int16), y.view(torch.int16)) and torch.equal(
            g.view(torch.int16), h.view(torch.int16)) for (x, g), (y, h) in zip(a, b, strict=True)
    )


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_remote_batches_equal_local(s3):
    local, far = open_store(s3["local"]), open_store(s3["url"])
    assert far.meta == local.meta and far.chunks == local.chunks
    assert torch.equal(far.token_windows("heldout"), local.token_windows("heldout"))
    assert _same(_batches(far), _batches(local))
    # A Path-typed CLI argument arrives as "s3:/..."; the manifest is cached after one open.
    assert open_store(Path(s3["url"])).manifest == far.manifest


def test_info_verify_passes_then_names_the_corrupt_remote_shard(s3, capsys):
    assert main(["info", "--verify", s3["url"]]) == 0
    out = capsys.readouterr().out
    assert "20 shards verified OK" in out and "local stores only" in out
    shard = s3["local"].with_suffix(".shards") / VICTIM
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 512] = bytes(512)  # same size, other bytes
    bad = upload(s3["client"], s3["local"], "bad/tiny.duckdb")
    s3["client"].put_object(Bucket=BUCKET, Key=f"bad/tiny.shards/{VICTIM}", Body=bytes(data))
    assert main(["info", "--verify", bad]) == 2
    line = _one_error_line(capsys)
    assert f"s3://{BUCKET}/bad/tiny.shards/{VICTIM} is corrupt" in line and "1 of 20" in line
    with pytest.raises(UserError, match=rf"shard s3://{BUCKET}/bad/tiny.shards/{VICTIM} is corr"):
        _batches(open_store(bad), n=15)  # one epoch reads every train shard


class DroppingProxy:
    """A TCP proxy to moto that cuts the first response to a GET of `victim` mid-body."""

    def __init__(self, port: int, victim: str):
        self.upstream, self.victim, self.dropped = port, victim.encode(), 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            up = socket.create_connection(("127.0.0.1", self.upstream))
            cut = threading.Event()
            threading.Thread(target=self._requests, args=(client, up, cut), daemon=True).start()
            threading.Thread(target=self._responses, args=(up, client, cut), daemon=True).start()

    def _requests(self, client, up, cut) -> None:
        while data := _recv(client):
            if data.startswith(b"GET ") and self.victim in data.split(b"\r\n")[0]:
                if not self.dropped:
                    self.dropped += 1
                    cut.set()
            up.sendall(data)
        up.close()

    def _responses(self, up, client, cut) -> None:
        while data := _recv(up):
            if cut.is_set():
                client.sendall(data[:2000])  # the headers and part of the body, then hang up
                client.shutdown(socket.SHUT_RDWR)
                client.close()
                up.close()
                return
            client.sendall(data)
        client.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except OSError:
        return b""


def test_connection_dropped_mid_read_is_retried(s3, monkeypatch):
    proxy = DroppingProxy(s3["port"], f"/good/tiny.shards/{VICTIM}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    far = open_store(s3["url"])
    victim = next(c for c in far.chunks if c.act_file == VICTIM)
    local = open_store(s3["local"])
    assert (far.chunk_words(victim) == local.chunk_words(victim)).all()
    assert proxy.dropped == 1


def test_failed_reads_retry_with_backoff_then_fail_in_one_line(s3, monkeypatch):
    import s3fs

    calls, real = [], s3fs.S3FileSystem._cat_file

    async def flaky(self, path, *args, **kwargs):
        if path.endswith(VICTIM):
            calls.append(path)
            if len(calls) <= failures:
                raise ConnectionResetError("Connection reset by peer")
        return await real(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", flaky)
    far = open_store(s3["url"])
    victim = next(c for c in far.chunks if c.act_file == VICTIM)
    failures = 2
    assert far.chunk_words_many(far.chunks[:3])[2].shape == (victim.n_tokens, far.d_in)
    assert len(calls) == 3
    calls.clear()
    failures = remote.ATTEMPTS
    with pytest.raises(UserError) as err:
        far.chunk_words(victim)
    assert len(calls) == remote.ATTEMPTS and "\n" not in str(err.value)
    assert f"s3://{BUCKET}/good/tiny.shards/{VICTIM}: could not read it in 4" in str(err.value)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no key", "not found"),
        ("no bucket", "no bucket 'missing'"),
        ("no credentials", "no S3 credentials"),
        ("no endpoint", "could not reach it"),
        ("no shards", "is truncated: shard s3://stores/bare/tiny.shards/act-000000"),
    ],
)
def test_errors_are_one_line(s3, capsys, monkeypatch, case, expected):
    url = {"no key": f"s3://{BUCKET}/good/other.duckdb",
           "no bucket": "s3://missing/good/tiny.duckdb"}.get(case, s3["url"])
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if case == "no endpoint":
        with socket.create_server(("127.0.0.1", 0)) as closed:
            free = closed.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free}")
    if case == "no shards":
        s3["client"].upload_file(str(s3["local"]), BUCKET, "bare/tiny.duckdb")
        url = f"s3://{BUCKET}/bare/tiny.duckdb"
    assert main(["info", url]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("saebench info: error:") and expected in line, line


def test_train_on_a_remote_store(s3, tmp_path):
    out = tmp_path / "saes" / "s"
    argv = ["train", "--store", s3["url"], "--out", str(out), "--k", "4", "--width", "64",
            "--tokens", "2048", "--batch-size", "256", "--warmup-steps", "2", "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    run = json.loads((out / "saebench_train.json").read_text())
    assert run["tokens_trained"] == 2048
    assert s3["url"] in json.dumps(run)  # where evals will look for the store
