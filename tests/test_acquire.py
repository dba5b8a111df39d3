"""`acquire`: S3 through a local moto server, https through a local http.server, local folders, synthetic."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from vaura.data.sources import AcquireConfig, AcquireError, RemoteFile, acquire, fetch_resumable, s3_client
from vaura.data.synthetic import SyntheticConfig

BLOBS = {f"clip{i}.mp4": np.random.default_rng(i).bytes(300_000 + 1000 * i) for i in range(3)}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_s3_download_and_resume(s3_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    client = s3_client(s3_endpoint, 10.0)
    client.create_bucket(Bucket="videos")
    for name, data in BLOBS.items():
        client.put_object(Bucket="videos", Key=f"vggsound/{name}", Body=data)
    client.put_object(Bucket="videos", Key="other/skip.mp4", Body=b"x")  # outside the prefix
    client.put_object(Bucket="videos", Key="vggsound-old/skip.mp4", Body=b"x")  # a sibling folder, not inside
    cfg = AcquireConfig(source="s3", uri="s3://videos/vggsound", endpoint_url=s3_endpoint, retries=1, backoff_s=0.01)
    out = tmp_path / "raw"

    assert acquire(out, cfg) == {"skipped": 0, "resumed": 0, "downloaded": 3}
    for name, data in BLOBS.items():
        assert (out / name).read_bytes() == data
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["path"]) == sorted(BLOBS) and set(manifest["split"]) == {"train"}
    assert not (out / "skip.mp4").exists() and not list(out.glob("*.part"))

    # an interrupted run: clip1 half downloaded (.part), clip2 with a corrupted prefix, clip0 complete
    (out / "clip1.mp4").unlink()
    (out / "clip1.mp4.part").write_bytes(BLOBS["clip1.mp4"][:120_000])
    (out / "clip2.mp4").unlink()
    (out / "clip2.mp4.part").write_bytes(b"\0" * 50_000)
    stamp = (out / "clip0.mp4").stat().st_mtime_ns
    counts = acquire(out, cfg)
    # clip1 continued from byte 120000 with an S3 Range request; clip2's resumed bytes failed the MD5 (ETag)
    # check, so it was downloaded again from scratch
    assert counts == {"skipped": 1, "resumed": 1, "downloaded": 1}
    for name, data in BLOBS.items():
        assert (out / name).read_bytes() == data
    assert (out / "clip0.mp4").stat().st_mtime_ns == stamp and not list(out.glob("*.part"))


def test_s3_errors_are_clear(s3_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    cfg = AcquireConfig(source="s3", uri="s3://no-such-bucket/x", endpoint_url=s3_endpoint, retries=0)
    with pytest.raises(AcquireError, match="no-such-bucket"):
        acquire(tmp_path, cfg)
    s3_client(s3_endpoint, 10.0).create_bucket(Bucket="empty")
    with pytest.raises(AcquireError, match="no objects"):
        acquire(tmp_path, AcquireConfig(source="s3", uri="s3://empty/none", endpoint_url=s3_endpoint))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with optional Range support and a number of injected 503 failures."""

    ranges = True
    failures: list[int] = []
    seen_ranges: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.failures and self.failures[0] > 0:
            self.failures[0] -= 1
            self.send_error(503, "try later")
            return
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not (self.ranges and rng and path.is_file()):
            super().do_GET()
            return
        self.seen_ranges.append(rng)
        data = path.read_bytes()
        start = int(rng.split("=")[1].split("-")[0])
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "site"
    root.mkdir()
    for name, data in BLOBS.items():
        (root / name).write_bytes(data)
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.ranges, _Handler.failures, _Handler.seen_ranges = True, [0], []
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def _url_list(tmp_path: Path, base: str, with_sha: bool) -> Path:
    lines = ["# test videos"]
    for name, data in BLOBS.items():
        lines.append(f"{base}/{name} {hashlib.sha256(data).hexdigest()}" if with_sha else f"{base}/{name}")
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_https_resume_with_range_and_retries(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    cfg = AcquireConfig(source="https", uri=str(_url_list(tmp_path, base, True)), retries=3, backoff_s=0.01)
    out = tmp_path / "raw"
    out.mkdir()
    (out / "clip2.mp4.part").write_bytes(BLOBS["clip2.mp4"][:100_000])
    _Handler.failures = [2]  # the first two GETs fail with 503: retried with backoff
    counts = acquire(out, cfg)
    assert counts == {"skipped": 0, "resumed": 1, "downloaded": 2}
    assert _Handler.seen_ranges == ["bytes=100000-"]
    for name, data in BLOBS.items():
        assert (out / name).read_bytes() == data
    assert acquire(out, cfg) == {"skipped": 3, "resumed": 0, "downloaded": 0}


def test_https_without_range_support_redoes_partial(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    _Handler.ranges = False
    out = tmp_path / "raw"
    out.mkdir()
    (out / "clip0.mp4.part").write_bytes(BLOBS["clip0.mp4"][:1000])
    counts = acquire(out, AcquireConfig(source="https", uri=str(_url_list(tmp_path, base, False)), retries=0))
    assert counts == {"skipped": 0, "resumed": 0, "downloaded": 3}
    assert (out / "clip0.mp4").read_bytes() == BLOBS["clip0.mp4"]


def test_https_permanent_errors_and_bad_lists(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    urls = tmp_path / "missing.txt"
    urls.write_text(f"{base}/nope.mp4\n")
    with pytest.raises(AcquireError, match="404"):
        acquire(tmp_path / "o", AcquireConfig(source="https", uri=str(urls), retries=5, backoff_s=5.0))
    urls.write_text("ftp://example.org/a.mp4\n")
    with pytest.raises(AcquireError, match="line 1"):
        acquire(tmp_path / "o", AcquireConfig(source="https", uri=str(urls)))
    bad_sha = tmp_path / "sha.txt"
    bad_sha.write_text(f"{base}/clip0.mp4 {'0' * 64}\n")
    with pytest.raises(AcquireError, match="sha256 checksum mismatch"):
        acquire(tmp_path / "o", AcquireConfig(source="https", uri=str(bad_sha), retries=1, backoff_s=0.01))
    assert not (tmp_path / "o" / "clip0.mp4").exists()


def test_local_folder_and_retry_backoff(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, data in BLOBS.items():
        (src / name).write_bytes(data)
    pd.DataFrame([{"clip": "clip0", "path": "clip0.mp4", "split": "val", "label": "dog"}]).to_csv(src / "manifest.csv", index=False)
    out = tmp_path / "raw"
    assert acquire(out, AcquireConfig(source="local", uri=str(src)))["downloaded"] == 4
    assert (out / "manifest.csv").read_bytes() == (src / "manifest.csv").read_bytes()  # the source's own manifest kept
    (out / "clip1.mp4").write_bytes(b"stale")  # wrong size: replaced, not trusted
    counts = acquire(out, AcquireConfig(source="local", uri=str(src)))
    assert counts == {"skipped": 3, "resumed": 0, "downloaded": 1}
    assert (out / "clip1.mp4").read_bytes() == BLOBS["clip1.mp4"]
    (out / "clip2.mp4").unlink()
    (out / "clip2.mp4.part").write_bytes(BLOBS["clip2.mp4"][:777])  # an interrupted copy is continued
    assert acquire(out, AcquireConfig(source="local", uri=str(src)))["resumed"] == 1
    assert (out / "clip2.mp4").read_bytes() == BLOBS["clip2.mp4"]
    assert {p.name: p.read_bytes() for p in src.glob("*.mp4")} == BLOBS  # the source is only read

    calls = []

    def flaky(offset: int):
        calls.append(offset)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return iter([b"abc"]), True

    assert fetch_resumable(tmp_path / "f.bin", RemoteFile("f.bin", 3), flaky, retries=3, backoff_s=0.001) == "downloaded"
    assert calls == [0, 0, 0] and (tmp_path / "f.bin").read_bytes() == b"abc"
    with pytest.raises(AcquireError, match="after 2 attempt"):
        fetch_resumable(tmp_path / "g.bin", RemoteFile("g.bin", 3), lambda o: (_ for _ in ()).throw(OSError("down")), 1, 0.001)


def test_synthetic_source(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_train=2, n_val=1, n_test=0, size=64, duration_s=2.56, max_events=4, workers=1)
    first = acquire(tmp_path, AcquireConfig(source="synthetic"), cfg, seed=3)
    assert first == {"skipped": 0, "resumed": 0, "downloaded": 3}
    assert {"manifest.csv", "events.csv", "relevance.csv"} <= {p.name for p in tmp_path.iterdir()}
    assert acquire(tmp_path, AcquireConfig(source="synthetic"), cfg, seed=3)["skipped"] == 3


def test_stage_cli_overrides(tmp_path: Path) -> None:
    from vaura.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.mp4").write_bytes(BLOBS["clip0.mp4"])
    params = tmp_path / "p.yaml"
    params.write_text(
        f"seed: 1\npaths: {{data: {tmp_path / 'data'}, reports: reports}}\n"
        "acquire: {source: synthetic, uri: '', endpoint_url: '', output: raw, retries: 0, backoff_s: 0.1, timeout_s: 5.0, "
        "default_split: val}\n"
    )
    assert main(["acquire", "--params", str(params), "--no-track", "--source", "local", "--uri", str(src)]) == 0
    manifest = pd.read_csv(tmp_path / "data" / "raw" / "manifest.csv")
    assert list(manifest["path"]) == ["a.mp4"] and list(manifest["split"]) == ["val"]
    assert main(["acquire", "--params", str(params), "--no-track", "--source", "local", "--uri", str(tmp_path / "nope")]) == 1
