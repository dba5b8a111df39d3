"""Where raw videos come from (stage ``acquire``): the synthetic benchmark, a local folder, S3, or an https list.

Every name a source offers (URL path, S3 key, local file name) goes through :func:`vaura.io.safe_child` before it
becomes a path: a name that would land outside the output folder is refused. A file that can never be fetched
usefully (empty, unsafe name, 404/403, checksum mismatch after a fresh download, unreadable) is *rejected*: listed
with its reason in ``<output>/rejected.csv`` (preprocess carries the rows into ``data/clips/rejected.csv``) while
the rest goes on; only transient failures that outlast the retries stop the stage (a re-run resumes them).

Every remote/local file goes through one resumable download routine: bytes land in ``NAME.part``, a
re-run continues a ``.part`` from where it stopped (HTTP Range / S3 Range / file seek) or restarts it when the
server cannot resume, the result is checked against the size and checksum the source declares, and only then
is it renamed to ``NAME`` (so an existing ``NAME`` is always complete and is skipped). Transient failures are
retried with exponential backoff. S3 credentials come only from the environment (boto3's standard variables).
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator, Literal
from urllib.parse import unquote, urlparse

import pandas as pd
from tqdm import tqdm

from vaura.config import bounded
from vaura.io import UnsafeNameError, atomic_write_csv, safe_child
from vaura.redact import redact

if TYPE_CHECKING:
    from vaura.data.synthetic import SyntheticConfig

CHUNK = 1 << 20
# Names acquire writes itself; a source file with one of them would be overwritten, so it is rejected.
RESERVED = ("rejected.csv",)


class AcquireError(RuntimeError):
    """A source that cannot be fetched; the message names the source/file and the reason."""


class _Permanent(AcquireError):
    """A failure retrying cannot fix (404, access denied, bad checksum after a fresh download...)."""


@dataclass
class AcquireConfig:
    """Params section ``acquire``: which source fills ``<data>/<output>`` and how downloads behave."""

    source: Literal["synthetic", "local", "s3", "https"] = "synthetic"
    uri: str = ""
    endpoint_url: str = ""
    output: str = "raw"
    retries: int = bounded(4, ge=0)
    backoff_s: float = bounded(1.0, ge=0)
    timeout_s: float = bounded(60.0, gt=0)
    default_split: Literal["train", "val", "test"] = "train"


@dataclass
class RemoteFile:
    """One file a source offers: its name in the output folder, where it comes from, what we know to verify it."""

    name: str
    size: int | None
    md5: str | None = None
    sha256: str | None = None
    origin: str = ""


# An opener returns (chunks, resumed): chunks of the file from ``offset`` when resumed is True, else from 0.
Opener = Callable[[int], tuple[Iterator[bytes], bool]]


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, item: RemoteFile) -> str | None:
    """None when ``path`` matches everything known about ``item``, else the mismatch as text."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        return f"size {size} bytes, expected {item.size}"
    for algo, want in (("md5", item.md5), ("sha256", item.sha256)):
        if want and _digest(path, algo) != want.lower():
            return f"{algo} checksum mismatch"
    return None


def fetch_resumable(dest: Path, item: RemoteFile, opener: Opener, retries: int, backoff_s: float,
                    progress: tqdm | None = None) -> str:
    """Make ``dest`` a verified copy of ``item``; returns ``"skipped"``, ``"resumed"`` or ``"downloaded"``."""
    if item.size == 0:
        raise _Permanent(f"{item.name}: empty file (0 bytes)")
    if dest.exists():
        if _verify(dest, item) is None:
            if progress is not None:
                progress.update(dest.stat().st_size)
            return "skipped"
        dest.unlink()  # wrong size/checksum: not ours to trust, fetch again
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        if item.size is not None and offset > item.size:
            part.unlink()
            offset = 0
        try:
            if item.size is not None and offset == item.size:
                resumed = True  # the previous run got every byte but stopped before verifying
            else:
                chunks, resumed = opener(offset)
                with part.open("ab" if resumed and offset else "wb") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                        if progress is not None:
                            progress.update(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            outcome = "resumed" if resumed and offset else "downloaded"
            problem = _verify(part, item)
            if problem is not None:
                part.unlink()  # a bad prefix cannot be repaired by resuming: start over next attempt
                message = f"{item.name}: downloaded file failed verification ({problem})"
                if not offset:  # a whole fresh download is wrong: retrying fetches the same bytes again
                    raise _Permanent(message)
                raise AcquireError(message)
            os.replace(part, dest)
            return outcome
        except _Permanent:
            raise
        except (PermissionError, IsADirectoryError) as exc:  # a local file we may not read stays unreadable
            raise _Permanent(f"{item.name}: unreadable ({exc.strerror})") from exc
        except Exception as exc:  # noqa: BLE001 - network/S3/IO errors are retried, then reported
            last = exc
    raise AcquireError(redact(f"{item.origin or item.name}: failed after {retries + 1} attempt(s): {last}"))


def _fetch_all(out_dir: Path, items: list[tuple[RemoteFile, Opener]], cfg: AcquireConfig, desc: str,
               rejected: list[dict]) -> dict[str, int]:
    """Fetch every item; a permanent per-file failure is appended to ``rejected`` and the others go on."""
    names = [it.name for it, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AcquireError(f"{desc}: several files map to the same output name(s) {dup[:5]}")
    total = sum(it.size for it, _ in items) if all(it.size is not None for it, _ in items) else None
    counts = {"skipped": 0, "resumed": 0, "downloaded": 0}
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
        for item, opener in items:
            try:
                if item.name in RESERVED:
                    raise _Permanent(f"{item.name}: reserved name (acquire writes its own)")
                dest = safe_child(out_dir, item.name)
                counts[fetch_resumable(dest, item, opener, cfg.retries, cfg.backoff_s, bar)] += 1
            except (_Permanent, UnsafeNameError) as exc:
                rejected.append(_reject(item.origin or item.name, exc))
    return counts


def _reject(origin: str, reason: object) -> dict[str, str]:
    """One ``rejected.csv`` row: where the file came from (credentials removed) and why it was refused."""
    return {"path": redact(origin), "reason": redact(str(reason))}


# ---------------------------------------------------------------- local folder


def _local_items(folder: Path) -> list[tuple[RemoteFile, Opener]]:
    if not folder.is_dir():
        raise AcquireError(f"{folder}: local source folder does not exist")

    def opener_for(src: Path) -> Opener:
        def open_at(offset: int) -> tuple[Iterator[bytes], bool]:
            def chunks() -> Iterator[bytes]:
                with src.open("rb") as fh:
                    fh.seek(offset)
                    yield from iter(lambda: fh.read(CHUNK), b"")
            return chunks(), True
        return open_at

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part"))
    return [(RemoteFile(p.name, p.stat().st_size, origin=str(p)), opener_for(p)) for p in files]


# ---------------------------------------------------------------- S3


def s3_client(endpoint_url: str, timeout_s: float):
    """boto3 S3 client; credentials from the environment only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY...)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url or None,
                        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1}))


def _s3_items(uri: str, cfg: AcquireConfig) -> list[tuple[RemoteFile, Opener]]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a folder, as `aws s3 sync` reads it: s3://b/videos must not pick up s3://b/videos-old/
    if not bucket:
        raise AcquireError(f"{uri}: not an s3://bucket/prefix URI")
    client = s3_client(cfg.endpoint_url, cfg.timeout_s)
    items: list[tuple[RemoteFile, Opener]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key.rsplit("/", 1)[-1]
                if not name or name.endswith(".part"):
                    continue
                etag = obj.get("ETag", "").strip('"')
                md5 = etag if len(etag) == 32 and "-" not in etag else None  # multipart ETags are not MD5s
                items.append((RemoteFile(name, int(obj["Size"]), md5=md5, origin=f"s3://{bucket}/{key}"),
                              _s3_opener(client, bucket, key)))
    except NoCredentialsError as exc:
        raise AcquireError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from exc
    except (ClientError, BotoCoreError) as exc:
        raise AcquireError(f"{uri}: cannot list the bucket ({exc})") from exc
    if not items:
        raise AcquireError(f"{uri}: no objects under this prefix")
    return items


def _s3_opener(client, bucket: str, key: str) -> Opener:
    def open_at(offset: int) -> tuple[Iterator[bytes], bool]:
        from botocore.exceptions import ClientError

        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            body = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "AccessDenied", "NoSuchBucket", "403", "404"):
                raise _Permanent(f"S3 {code}") from exc
            raise
        return body.iter_chunks(CHUNK), True
    return open_at


# ---------------------------------------------------------------- https list


def _read_url_list(uri: str, cfg: AcquireConfig) -> list[tuple[str, str | None]]:
    """Lines ``URL [sha256]``; ``#`` starts a comment. ``uri`` is a local file or an http(s) URL of one."""
    import requests

    if uri.startswith(("http://", "https://")):
        try:
            resp = requests.get(uri, timeout=cfg.timeout_s)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise AcquireError(redact(f"{uri}: cannot fetch the URL list ({exc})")) from exc
        text = resp.text
    else:
        path = Path(uri)
        if not path.is_file():
            raise AcquireError(f"{uri}: URL list file does not exist")
        text = path.read_text()
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if not fields[0].startswith(("http://", "https://")) or len(fields) > 2:
            raise AcquireError(redact(f"{uri}: line {n} is not 'URL [sha256]': {line.strip()!r}"))
        entries.append((fields[0], fields[1] if len(fields) == 2 else None))
    if not entries:
        raise AcquireError(f"{uri}: the URL list is empty")
    return entries


def _https_items(uri: str, cfg: AcquireConfig) -> list[tuple[RemoteFile, Opener]]:
    import requests

    session = requests.Session()
    items = []
    for url, sha in _read_url_list(uri, cfg):
        name = unquote(PurePosixPath(urlparse(url).path).name)
        size = None
        try:
            head = session.head(url, allow_redirects=True, timeout=cfg.timeout_s)
            if head.ok and head.headers.get("Content-Length", "").isdigit():
                size = int(head.headers["Content-Length"])
        except requests.RequestException:
            pass  # size is then checked against what the download itself declares
        items.append((RemoteFile(name, size, sha256=sha, origin=url), _http_opener(session, url, cfg.timeout_s)))
    return items


def _http_opener(session, url: str, timeout_s: float) -> Opener:
    def open_at(offset: int) -> tuple[Iterator[bytes], bool]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = session.get(url, headers=headers, stream=True, timeout=timeout_s)
        if resp.status_code in (404, 401, 403, 410):
            raise _Permanent(f"HTTP {resp.status_code}")
        resp.raise_for_status()
        resumed = resp.status_code == 206  # 200 means the server ignored Range: it sends the whole file
        declared = resp.headers.get("Content-Length")

        def chunks() -> Iterator[bytes]:
            got = 0
            for chunk in resp.iter_content(CHUNK):
                got += len(chunk)
                yield chunk
            if declared is not None and declared.isdigit() and got != int(declared):
                raise AcquireError(f"{redact(url)}: connection closed after {got} of {declared} bytes")
        return chunks(), resumed
    return open_at


# ---------------------------------------------------------------- entry point


def _write_manifest(out_dir: Path, default_split: str) -> None:
    from vaura.data.preprocess import list_inputs

    rows = [{"clip": p.stem, "path": p.name, "split": default_split, "label": ""} for p in list_inputs(out_dir)]
    atomic_write_csv(out_dir / "manifest.csv", pd.DataFrame(rows, columns=["clip", "path", "split", "label"]))


def acquire(out_dir: str | Path, cfg: AcquireConfig, synthetic: SyntheticConfig | None = None, seed: int = 0) -> dict[str, int]:
    """Fill ``out_dir`` from ``cfg.source``; returns counts (files skipped / resumed / downloaded / rejected).

    A source that brings its own ``manifest.csv`` keeps it; otherwise one is written listing every fetched
    file with ``split=cfg.default_split`` and no label. Rejected files are listed in ``rejected.csv``; when
    every file was rejected the stage fails (there is nothing to go on with).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.source == "synthetic":
        from vaura.data.synthetic import generate_benchmark

        if synthetic is None:
            raise AcquireError("acquire: source 'synthetic' needs the `synthetic` params section")
        existing = {p.name for p in out_dir.glob("*.mp4")}
        manifest = generate_benchmark(out_dir, synthetic, seed)
        kept = sum(name in existing for name in manifest["path"])
        return {"skipped": kept, "resumed": 0, "downloaded": len(manifest) - kept, "rejected": 0}
    if not cfg.uri:
        raise AcquireError(f"acquire: source {cfg.source!r} needs `acquire.uri`")
    if cfg.source == "local":
        folder = Path(cfg.uri)
        if folder.resolve() == out_dir.resolve():
            raise AcquireError(f"{folder}: the local source is the output folder itself")
        items = _local_items(folder)
    elif cfg.source == "s3":
        items = _s3_items(cfg.uri, cfg)
    else:
        items = _https_items(cfg.uri, cfg)
    rejected: list[dict] = []
    counts = _fetch_all(out_dir, items, cfg, f"acquire {cfg.source}", rejected)
    atomic_write_csv(out_dir / "rejected.csv", pd.DataFrame(rejected, columns=["path", "reason"]))
    if rejected and len(rejected) == len(items):
        raise AcquireError(f"{redact(cfg.uri)}: every file was rejected, e.g. {rejected[0]['path']}: {rejected[0]['reason']}")
    if not any(item.name == "manifest.csv" for item, _ in items):
        _write_manifest(out_dir, cfg.default_split)
    return {**counts, "rejected": len(rejected)}

