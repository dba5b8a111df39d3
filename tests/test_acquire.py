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

    assert acquire(out, cfg) == {"skipped": 0, "resumed": 0, "downloaded": 3, "rejected": 0}
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
    assert counts == {"skipped": 1, "resumed": 1, "downloaded": 1, "rejected": 0}
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
    assert counts == {"skipped": 0, "resumed": 1, "downloaded": 2, "rejected": 0}
    assert _Handler.seen_ranges == ["bytes=100000-"]
    for name, data in BLOBS.items():
        assert (out / name).read_bytes() == data
    assert acquire(out, cfg) == {"skipped": 3, "resumed": 0, "downloaded": 0, "rejected": 0}


def test_https_without_range_support_redoes_partial(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    _Handler.ranges = False
    out = tmp_path / "raw"
    out.mkdir()
    (out / "clip0.mp4.part").write_bytes(BLOBS["clip0.mp4"][:1000])
    counts = acquire(out, AcquireConfig(source="https", uri=str(_url_list(tmp_path, base, False)), retries=0))
    assert counts == {"skipped": 0, "resumed": 0, "downloaded": 3, "rejected": 0}
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
    assert counts == {"skipped": 3, "resumed": 0, "downloaded": 1, "rejected": 0}
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
    assert first == {"skipped": 0, "resumed": 0, "downloaded": 3, "rejected": 0}
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


# ---------------------------------------------------------------- names from outside never escape the folder

# the same four attacks on every source: a %2F-encoded absolute path, ../, a Windows drive and a backslash
VICTIM = "victim.txt"


def _outside_untouched(tmp_path: Path, out: Path) -> None:
    """The victim beside the data folder keeps its bytes and nothing new appears outside ``out``."""
    assert (tmp_path / VICTIM).read_bytes() == b"precious"
    outside = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert not [p for p in outside if p.is_file() and p.name not in (VICTIM, "urls.txt") and "src" not in p.parts
                and "site" not in p.parts]


class _AnyPathHandler(_Handler):
    """Answers any path it has no file for with 200 and attacker bytes (a hostile server)."""

    def do_GET(self) -> None:
        if Path(self.translate_path(self.path)).is_file() and ".." not in self.path and "%" not in self.path:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Length", "11")
        self.end_headers()
        self.wfile.write(b"overwritten")


def test_https_names_cannot_escape(tmp_path: Path) -> None:
    from urllib.parse import quote

    (tmp_path / VICTIM).write_bytes(b"precious")
    root = tmp_path / "site"
    root.mkdir()
    (root / "clip0.mp4").write_bytes(BLOBS["clip0.mp4"])
    handler = lambda *a, **k: _AnyPathHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    out = tmp_path / "data" / "raw"
    attacks = [f"/{quote(str(tmp_path / VICTIM), safe='')}",  # %2Ftmp%2F...%2Fvictim.txt: absolute after unquote
               f"/a/..%2F..%2F..%2F{VICTIM}", f"/C:%5C{VICTIM}", f"/..%5C..%5C{VICTIM}", "/x/%2E%2E"]
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join([f"{base}/clip0.mp4"] + [base + a for a in attacks]) + "\n")
    try:
        counts = acquire(out, AcquireConfig(source="https", uri=str(urls), retries=0))
    finally:
        server.shutdown()
    assert counts["downloaded"] == 1 and counts["rejected"] == len(attacks)
    assert (out / "clip0.mp4").read_bytes() == BLOBS["clip0.mp4"]
    rejected = pd.read_csv(out / "rejected.csv")
    assert sorted(rejected["path"]) == sorted(base + a for a in attacks)
    assert rejected["reason"].str.contains("unsafe file name").all()
    _outside_untouched(tmp_path, out)


def test_s3_keys_cannot_escape(s3_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    (tmp_path / VICTIM).write_bytes(b"precious")
    client = s3_client(s3_endpoint, 10.0)
    client.create_bucket(Bucket="hostile")
    bad = [f"v/..\\{VICTIM}", f"v/C:\\{VICTIM}", "v/.."]
    for key in bad:
        client.put_object(Bucket="hostile", Key=key, Body=b"overwritten")
    client.put_object(Bucket="hostile", Key="v/clip0.mp4", Body=BLOBS["clip0.mp4"])
    client.put_object(Bucket="hostile", Key=f"v/%2F..%2F{VICTIM}", Body=b"literal")  # S3 keys are not URL-decoded
    out = tmp_path / "data" / "raw"
    counts = acquire(out, AcquireConfig(source="s3", uri="s3://hostile/v", endpoint_url=s3_endpoint, retries=0))
    assert counts["downloaded"] == 2 and counts["rejected"] == len(bad)
    assert (out / f"%2F..%2F{VICTIM}").read_bytes() == b"literal"
    assert sorted(pd.read_csv(out / "rejected.csv")["path"]) == sorted(f"s3://hostile/{k}" for k in bad)
    _outside_untouched(tmp_path, out)


def test_local_names_cannot_escape_and_bad_files_do_not_stop_the_stage(tmp_path: Path) -> None:
    (tmp_path / VICTIM).write_bytes(b"precious")
    src = tmp_path / "src"
    src.mkdir()
    for name in (f"a\\..\\..\\{VICTIM}", f"C:\\{VICTIM}"):
        (src / name).write_bytes(b"overwritten")
    (src / "clip0.mp4").write_bytes(BLOBS["clip0.mp4"])
    (src / "empty.mp4").write_bytes(b"")  # a 0-byte file: rejected at once, not retried
    (src / "rejected.csv").write_text("path,reason\n")  # acquire's own file name: not taken from a source
    out = tmp_path / "data" / "raw"
    cfg = AcquireConfig(source="local", uri=str(src), retries=4, backoff_s=30.0)  # a retry would take minutes
    counts = acquire(out, cfg)
    assert counts == {"skipped": 0, "resumed": 0, "downloaded": 1, "rejected": 4}
    reasons = dict(pd.read_csv(out / "rejected.csv").values)
    assert "Windows-style" in reasons[str(src / f"a\\..\\..\\{VICTIM}")] and "Windows-style" in reasons[str(src / f"C:\\{VICTIM}")]
    assert "empty file (0 bytes)" in reasons[str(src / "empty.mp4")]
    assert "reserved name" in reasons[str(src / "rejected.csv")]
    assert list(pd.read_csv(out / "manifest.csv")["path"]) == ["clip0.mp4"]
    _outside_untouched(tmp_path, out)

    # the rejected rows reach the one list users read, data/clips/rejected.csv
    from vaura.data.preprocess import _rejected_upstream

    assert len(_rejected_upstream(out)) == 4
    # a source whose every file is bad stops the stage with the reason
    (src / "clip0.mp4").unlink()
    with pytest.raises(AcquireError, match="every file was rejected"):
        acquire(tmp_path / "other", cfg)


def test_unreadable_file_is_rejected_without_retries(tmp_path: Path) -> None:
    calls = []

    def denied(offset: int):
        calls.append(offset)
        raise PermissionError(13, "Permission denied")

    with pytest.raises(AcquireError, match="unreadable"):
        fetch_resumable(tmp_path / "f.mp4", RemoteFile("f.mp4", 10), denied, retries=4, backoff_s=30.0)
    assert calls == [0]


def test_manifest_names_cannot_escape(tmp_path: Path) -> None:
    from vaura.data.manifest import ManifestError, read_manifest

    folder = tmp_path / "raw"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.mp4").write_bytes(b"x")
    good = pd.DataFrame([{"clip": "a", "path": "sub/a.mp4", "split": "train", "label": ""}])
    good.to_csv(folder / "manifest.csv", index=False)
    assert read_manifest(folder / "manifest.csv", check_files=True)["path"][0] == str((folder / "sub" / "a.mp4").resolve())
    for clip in ("../a", "sub/a", str(tmp_path / "a"), "..\\a", "C:\\a", ".."):  # clip ids name written files
        good.assign(clip=clip).to_csv(folder / "manifest.csv", index=False)
        with pytest.raises(ManifestError, match="row 2: unsafe file name"):
            read_manifest(folder / "manifest.csv")
    good.assign(path="../elsewhere/a.mp4").to_csv(folder / "manifest.csv", index=False)  # paths are only read
    assert read_manifest(folder / "manifest.csv")["path"][0] == str((tmp_path / "elsewhere" / "a.mp4").resolve())


def test_safe_child_follows_symlinks(tmp_path: Path) -> None:
    from vaura.io import UnsafeNameError, safe_child

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link.mp4").symlink_to(tmp_path / VICTIM)
    with pytest.raises(UnsafeNameError, match="resolves outside"):
        safe_child(tmp_path / "out", "link.mp4")
    assert safe_child(tmp_path / "out", "ok.mp4") == tmp_path / "out" / "ok.mp4"


def test_readme_short_manifest_form(tmp_path: Path) -> None:
    """The README's `clip,split,label` manifest (no path column): each clip's file is found by its stem."""
    from vaura.data.manifest import read_manifest

    (tmp_path / "dog.mkv").write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text("clip,split,label\ndog,val,barking\n")
    df = read_manifest(tmp_path / "manifest.csv", check_files=True)
    assert list(df["path"]) == [str((tmp_path / "dog.mkv").resolve())] and list(df["split"]) == ["val"]


def test_signed_urls_are_redacted_in_rejected_list_and_errors(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{base}/clip0.mp4?X-Amz-Signature=s3cr3tsig\n{base}/gone.mp4?X-Amz-Credential=AKIAX&sig=azsig\n")
    out = tmp_path / "raw"
    assert acquire(out, AcquireConfig(source="https", uri=str(urls), retries=0))["rejected"] == 1
    text = (out / "rejected.csv").read_text()
    assert "gone.mp4?X-Amz-Credential=***&sig=***" in text and "AKIAX" not in text and "azsig" not in text
    _Handler.failures = [10]  # every GET fails: the error after the retries names the URL without its signature
    with pytest.raises(AcquireError) as err:
        acquire(tmp_path / "o2", AcquireConfig(source="https", uri=str(urls), retries=1, backoff_s=0.01))
    assert "clip0.mp4?X-Amz-Signature=***" in str(err.value) and "s3cr3tsig" not in str(err.value)
