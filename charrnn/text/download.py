"""Downloads into the corpus cache, owned here: a URL's text fetched into a file of its own
and renamed into place only once complete (and checked, when a checksum is known), so a
download cut short is never a corpus; a download without a checksum checked against its
URL at each use (a conditional request with what the server said of it, kept beside it);
copies of a local source kept as private as it. charrnn.text.corpus decides what to download.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import http.client
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

from charrnn import storage
from charrnn.errors import CharRNNError, TryAgain
from charrnn.log import logger
from charrnn.progress import Progress
from charrnn.storage import is_local

DATA_DIR_ENV = "CHARRNN_DATA_DIR"  # the cache directory (charrnn.text.corpus.cache_dir)
# A download that brings fewer than _STALL_BYTES in _STALL_SECONDS is given up (a server
# trickling a byte at a time would otherwise hold it forever: the socket's timeout is per read).
_STALL_SECONDS, _STALL_BYTES = 60.0, 16 << 10
# The longest file name a download is kept under (the URL's own name is cut to fit).
_NAME_LIMIT = 100
_HASH_CHUNK = 16 << 20  # bytes hashed at a time


def download(url: str, cache: str) -> str:
    """A URL's file in the cache directory `cache`, downloaded once (checked when the URL ends
    in #sha256=<hex>)."""
    parts = urllib.parse.urlsplit(url)
    expected = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
    origin = urllib.parse.urlunsplit(parts._replace(fragment=""))
    name = os.path.basename(parts.path) or "download.txt"
    if len(name) > _NAME_LIMIT:
        stem, dot, extension = name.rpartition(".")
        name = (stem[:_NAME_LIMIT - len(extension) - 1] + dot + extension) if dot and len(extension) < 10 else \
            name[:_NAME_LIMIT]
    path = os.path.join(cache, "downloads", f"{hashlib.sha256(origin.encode()).hexdigest()[:12]}-{name}")
    hint = "check the URL, or download it and pass the file"
    if not storage.exists(path):
        fetch(origin, path, expected and expected.lower(), f"could not download {origin}", hint)
    elif expected is not None:
        if (digest := sha256_of(path)) != expected.lower():  # charrnn's own download, damaged since
            storage.remove(path)
            raise CharRNNError(f"the cached download {path} of {origin} has sha256 {digest}, expected {expected}; it "
                               "was removed: run again to download it again")
    else:
        revalidate(origin, path, hint)
    return path


def revalidate(url: str, path: str, hint: str) -> None:
    """Downloads `url` again to `path` if its text changed since charrnn downloaded it there (a
    conditional request with what the server said of that download; a file without that
    record is not charrnn's download and is used as it is). When the server cannot be
    asked, the copy is used, with a warning."""
    record = _read_record(path)
    if record is None:
        return
    if not _intact(path, record):
        # Whatever the server would say of its text, this copy is no longer that text (cut
        # short, edited, replaced): never used, downloaded again, or refused.
        logger.warning(f"the copy of {url} in the cache ({path}) is not the text downloaded "
                       f"{record.get('downloaded', 'earlier')}: it was changed or damaged since; downloading it again")
        fetch(url, path, None, f"could not download {url} to replace its damaged copy", hint, trust_copy=False,
              previous=record)
        return
    headers = {key: record[field] for key, field in (("If-None-Match", "etag"), ("If-Modified-Since",
                                                                                  "last_modified"))
        if record.get(field)}
    try:
        changed = fetch(url, path, None, f"could not download {url}", hint, headers=headers, quiet_if_same=True,
                        previous=record)
    except CharRNNError as e:
        logger.warning(f"could not check {url} for changes ({_reason_of(e)}); using the copy downloaded "
                       f"{record.get('downloaded', 'earlier')}")
        return
    if changed:
        logger.info(f"{url} changed since it was downloaded {record.get('downloaded', 'earlier')}; "
                    f"using its new text")


def _intact(path: str, record: dict) -> bool:
    """Whether the copy at `path` is still what its download `record` says was written there."""
    try:
        return storage.size(path) == record.get("size") and sha256_of(path) == record.get("sha256")
    except storage.storage_errors():
        return False


def _reason_of(error: CharRNNError) -> str:
    message = str(error)
    return message[message.find("(") + 1:message.rfind(")")] if "(" in message else message


def fetch(url: str, path: str, sha256: str | None, failure: str, hint: str, headers: dict | None = None,
           quiet_if_same: bool = False, trust_copy: bool = True, previous: dict | None = None) -> bool:
    """Downloads `url` to `path`: into a file of its own (see part_name; on the local disk
    where `path` is elsewhere), checked against the length the server announced and
    against `sha256` when given, then renamed (or copied) into place, with a record of what
    the server said of it (for _revalidate). A download cut short, stalled or refused
    leaves nothing behind. With `headers` (a conditional request) a "not modified" answer,
    or the same text again, leaves `path` as it is (unless `trust_copy` is False: a copy
    known to be damaged is replaced). With `previous`, the record of the download that
    `path` held, an answer that is an HTML page where that was not (a network's sign-in
    page, an error page served as a success) is refused, leaving `path` as it is. Returns
    whether `path` changed.

    What a rerun may get past (a lost connection, a server error, a download cut short) is
    a TryAgain (exit 75); what it cannot (a 404, a missing file:// path, a redirect loop, a
    checksum that does not match) a CharRNNError (exit 2)."""
    part = _part_for(path)
    digest = hashlib.sha256()
    if not quiet_if_same:
        logger.info(f"downloading {url}")
    try:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as f:  # noqa: S310
                announced = _content_length(response.headers.get("Content-Length"))
                validators = {"etag": response.headers.get("ETag"),
                              "last_modified": response.headers.get("Last-Modified"),
                              "content_type": _media_type(response.headers.get("Content-Type")),
                              "final_url": response.geturl()}
                size = _receive(response, f, digest, Progress(f"downloading {url}", announced or 0), failure, hint)
        except urllib.error.HTTPError as e:
            if e.code == 304 and headers:  # not modified since the download charrnn has
                return False
            error = TryAgain if e.code >= 500 or e.code in (408, 425, 429) else CharRNNError
            again = "run again to retry, or " if error is TryAgain else ""
            raise error(f"{failure} (HTTP {e.code} {e.reason}); {again}{hint}") from None
        except TryAgain:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            raise _download_error(e, failure, hint) from None
        if announced is not None and size != announced:
            raise TryAgain(f"{failure} (the download ended after {size:,} of {announced:,} bytes); run again to "
                           f"retry, or {hint}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise CharRNNError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; it was not "
                               f"kept; {hint}")
        record = {"url": url, "sha256": digest.hexdigest(), "size": size, **validators,
                  "downloaded": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        was = previous.get("content_type", "text/html") if previous is not None else None  # older records: unknown
        if previous is not None and record["content_type"] == "text/html" and was != "text/html" and \
                record["sha256"] != previous.get("sha256"):
            raise CharRNNError(f"{failure} (the answer, from {record['final_url']}, is an HTML page where the text "
                               f"was {was or 'not one'}: a network's sign-in page or an error "
                               f"page?); {hint}")
        if not _keep(part, path, record, trust_copy):
            return False
    finally:
        if os.path.exists(part):
            os.remove(part)
    if not quiet_if_same:
        logger.info(f"downloaded {size:,} bytes to {path}")
    return True


def _part_for(path: str) -> str:
    """The file a download to `path` is written to first: beside it, or on the local disk
    where `path` is elsewhere; what dead writers left there is removed first."""
    local_dir = os.path.dirname(path) if is_local(path) else tempfile.gettempdir()
    try:
        os.makedirs(local_dir, exist_ok=True)
    except OSError as e:
        raise CharRNNError(f"cannot create the corpus cache {local_dir} ({e.strerror}); set ${DATA_DIR_ENV} to a "
                           "writable directory") from None
    storage.remove_dead_parts(local_dir)
    return storage.part_name(os.path.join(local_dir, os.path.basename(path)))


def _receive(response: Any, f: BinaryIO, digest: Any, progress: Progress, failure: str, hint: str) -> int:
    """Writes what `response` brings to `f` (synced), hashing it into `digest`; returns its
    size. A TryAgain when it stalls."""
    size, window_start, window_bytes = 0, time.monotonic(), 0
    while chunk := response.read1(1 << 16):  # what has come: a stall is seen as it happens
        f.write(chunk)
        digest.update(chunk)
        size += len(chunk)
        window_bytes += len(chunk)
        progress.update(size)
        if time.monotonic() - window_start >= _STALL_SECONDS:
            if window_bytes < _STALL_BYTES:
                raise TryAgain(f"{failure} (the download stalled: {window_bytes:,} bytes in the last "
                               f"{_STALL_SECONDS:g} s, {size:,} in all); run again to retry, or {hint}")
            window_start, window_bytes = time.monotonic(), 0
    f.flush()
    os.fsync(f.fileno())
    return size


def _keep(part: str, path: str, record: dict, trust_copy: bool = True) -> bool:
    """Puts the complete download `part` at `path` with its `record`; returns False, keeping
    `path`, when it holds the same text already (only the record is renewed; with
    `trust_copy` False, `path` is replaced all the same)."""
    previous = _read_record(path)
    source = _local_source(record["url"])
    if trust_copy and previous is not None and previous.get("sha256") == record["sha256"] and storage.exists(path):
        _write_record(path, record, source)  # the same text: what the server says of it now
        return False
    if source is not None:  # a copy of a local file is no more readable than it (its owner's aside)
        os.chmod(part, os.stat(part).st_mode & (storage.common_mode([source]) or 0o777) & 0o777 | 0o600)
    if is_local(path):
        os.replace(part, path)
    else:
        with open(part, "rb") as f:
            storage.write_atomic(path, f.read())
    _write_record(path, record, source)
    return True


def _media_type(value: str | None) -> str | None:
    """The media type of a Content-Type header ("text/plain; charset=utf-8" -> "text/plain")."""
    media = (value or "").split(";")[0].strip().lower()
    return media or None


def _content_length(value: str | None) -> int | None:
    """The length a server announced, or None where it announced none, or none that is a length."""
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _download_error(error: BaseException, failure: str, hint: str) -> CharRNNError:
    """A failed download's one-line error: TryAgain for what a rerun may get past (a lost or
    refused connection, a timeout, a reply cut short), else a CharRNNError (a missing
    file:// path, a redirect loop, a name the filesystem refuses, a malformed URL)."""
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error) or type(error).__name__
    cause = reason if isinstance(reason, BaseException) else error
    permanent = isinstance(error, ValueError) or (
        isinstance(cause, OSError) and cause.errno in (errno.ENOENT, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR,
                                                      errno.EACCES, errno.EPERM))
    if permanent:
        return CharRNNError(f"{failure} ({getattr(cause, 'strerror', None) or reason}); {hint}")
    if isinstance(cause, socket.gaierror):  # no network, or no DNS: a rerun helps once it is back
        return TryAgain(f"{failure} ({getattr(cause, 'strerror', None) or reason}: the host's name could not be "
                        f"looked up); run again once the network is back, or {hint}")
    return TryAgain(f"{failure} ({getattr(cause, 'strerror', None) or reason}); run again to retry, or {hint}")


def _local_source(url: str) -> str | None:
    """The local file a file:// URL names (None for other URLs)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.request.url2pathname(parts.path) if parts.scheme == "file" else None


def _record_path(path: str) -> str:
    """Where charrnn keeps what the server said of the download at `path`."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.download.json")


def _write_record(path: str, record: dict, source: str | None) -> None:
    """Writes what the server said of the download at `path`, as private as a local source."""
    storage.write_atomic(_record_path(path), json.dumps(record))
    if source is not None and is_local(path):
        os.chmod(_record_path(path), os.stat(_record_path(path)).st_mode & (storage.common_mode([source]) or 0o777)
                 | 0o600)


def _read_record(path: str) -> dict | None:
    try:
        record = json.loads(storage.read_bytes(_record_path(path), 1 << 20) or b"null")
    except (ValueError, CharRNNError, OSError):
        return None
    return record if isinstance(record, dict) else None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
