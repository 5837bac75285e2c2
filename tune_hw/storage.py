"""Where runs are stored: a local directory or object storage (`s3://bucket/prefix`, `gs://…`),
read and written through pyarrow's filesystems, with one atomic write for both.

`location(text)` gives a `pathlib.Path` for a local path and an `ObjectPath` for a URI; an
`ObjectPath` has the few `Path` methods tune_hw's readers use (`/`, `name`, `parent`,
`is_file`, `is_dir`, `iterdir`, `glob`, `read_bytes`, `read_text`), so a reader does not ask
where a run lives. Credentials come from the environment (AWS_ACCESS_KEY_ID, a profile, an
instance role) and S3-compatible endpoints from AWS_ENDPOINT_URL or the URI's
`?endpoint_override=`: pyarrow's `FileSystem.from_uri` reads both. A filesystem object is never
handed to Ray or to a trial: one built with explicit keys pickles its secret into the run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import pyarrow.fs as pafs

from tune_hw.errors import UserError

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # pyarrow's order: the first wins
# what else of the environment decides a filesystem: a change makes a new one
CREDENTIAL_ENVS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")


def is_uri(text: str | os.PathLike) -> bool:
    """True for object storage (`scheme://…`); `file://` and plain paths are local."""
    text = str(text)
    return "://" in text and not text.startswith("file://")


def location(text: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """A run's place: an `ObjectPath` for object storage, else a local `Path`."""
    if isinstance(text, (ObjectPath, Path)):
        return text
    text = str(text)
    if is_uri(text):
        return ObjectPath(text)
    return Path(text.removeprefix("file://")).expanduser()


class ObjectPath:
    """A key (or a prefix: a "directory") in object storage, spelled as its URI."""

    def __init__(self, uri: str):
        base, _, self.query = uri.partition("?")
        self.scheme, _, key = base.partition("://")
        self.key = "/".join(part for part in key.split("/") if part)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}" + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __lt__(self, other: ObjectPath) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str) -> ObjectPath:
        return self._with_key(f"{self.key}/{name}".strip("/"))

    def _with_key(self, key: str) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{key}" + (f"?{self.query}" if self.query else ""))

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return self._with_key(self.key.rpartition("/")[0])

    @property
    def parents(self) -> list[ObjectPath]:
        out, path = [], self
        while "/" in path.key:
            path = path.parent
            out.append(path)
        return out

    @property
    def fs(self) -> pafs.FileSystem:
        bucket = self.key.partition("/")[0]
        environment = hash(tuple(os.environ.get(e, "") for e in (*ENDPOINT_ENVS,
                                                                  *CREDENTIAL_ENVS)))
        return _filesystem(self.scheme, bucket, self.query, environment)

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> Any:
        """The object's size (the one field of os.stat_result tune_hw reads)."""
        return SimpleNamespace(st_size=self._info().size)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object storage has no directories, a key's prefix exists with it."""

    def iterdir(self) -> Iterator[ObjectPath]:
        selector = pafs.FileSelector(self.key, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            yield self._with_key(info.path)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Matches of a pattern of plain components (`*.json`, `*/*.pkl`), one level each."""
        level = [self]
        for part in pattern.split("/"):
            level = [child for path in level for child in path.iterdir()
                     if fnmatch.fnmatchcase(child.name, part)]
        yield from level

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.key) as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> None:
        """Write `data` atomically (see `atomic_write`)."""
        atomic_write(self, lambda tmp: Path(tmp).write_bytes(data))


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, bucket: str, query: str, environment: int) -> pafs.FileSystem:
    """One filesystem per bucket, URI options and environment (pyarrow resolves the S3
    region once per filesystem)."""
    del environment  # part of the cache key only: from_uri reads the environment itself
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}" + (f"?{query}" if query else ""))[0]


def atomic_write(path: Path | ObjectPath, write: Callable[[str], Any]) -> None:
    """`write(tmp)` a local temporary file, then put it in place whole: readers see the old
    file or the complete new one, and a write that fails leaves the old one as it was.

    Local: the temporary file sits beside `path` and is renamed over it (rename is atomic).
    Object storage: the bytes go to a hidden temporary key beside `path`, which is then moved
    onto it (S3: a server-side copy and a delete; the copy replaces the object whole). Never
    written straight to `path`: pyarrow's stream publishes what it holds when it is closed,
    also by an exception, so a failed writer would publish half a file. What remains on object
    storage: no atomicity across objects (trials.parquet and epochs.parquet may be one write
    apart), and a crash between copy and delete leaves a stray `.NAME.*.tmp` key (harmless).
    """
    if isinstance(path, ObjectPath):
        _atomic_put(path, write)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_put(path: ObjectPath, write: Callable[[str], Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="tune_hw_put") as local:
        staged = os.path.join(local, path.name)
        write(staged)
        data = Path(staged).read_bytes()
    # not *.json/*.pkl: Ray's restore downloads those names from the run directory
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with path.fs.open_output_stream(tmp.key) as out:
            out.write(data)
        path.fs.move(tmp.key, path.key)
    except BaseException:
        with contextlib.suppress(OSError):
            path.fs.delete_file(tmp.key)
        raise


def check_reachable(storage: ObjectPath, what: str = "--storage-path") -> None:
    """The bucket of `storage` exists and answers; else one `UserError` naming the bucket,
    the endpoint or the credentials (reads only: the report needs no write access)."""
    bucket = storage.key.partition("/")[0]
    if not bucket:
        raise UserError(f"{what} {storage}: no bucket named; write "
                        f"{storage.scheme}://BUCKET/PREFIX")
    try:
        missing = storage.fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{what} {storage}: {_why(exc, storage)}") from None
    if missing:
        raise UserError(f"{what} {storage}: bucket {bucket!r} does not exist at "
                        f"{endpoint(storage)}; create it or fix the name")


def probe(storage: ObjectPath) -> None:
    """Object storage takes runs: the bucket exists and a probe object can be written and
    deleted; else one `UserError` naming the bucket, the endpoint or the credentials."""
    check_reachable(storage)
    try:
        probe_key = (storage / f".tune_hw_probe-{uuid.uuid4().hex[:8]}").key
        with storage.fs.open_output_stream(probe_key) as out:
            out.write(b"probe")
        storage.fs.delete_file(probe_key)
    except (OSError, ValueError) as exc:
        raise UserError(f"--storage-path {storage}: {_why(exc, storage)}") from None


def _why(exc: BaseException, storage: ObjectPath) -> str:
    """pyarrow's error as the one thing the user can fix: endpoint, credentials, or as said."""
    text = str(exc)
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        detail = text.split("Details: ")[-1].strip().splitlines()[0][:80]
        return (f"cannot reach {endpoint(storage)} ({detail}); check AWS_ENDPOINT_URL or the "
                "URI's endpoint_override, and the network")
    denied = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
              "No response body", "HTTP status 403", "HTTP status 500")
    if any(word in text for word in denied):
        return ("access denied: check the credentials in the environment (AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and the bucket's policy")
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def endpoint(storage: ObjectPath) -> str:
    """The endpoint requests go to, as pyarrow chooses it, for messages."""
    query = {k: v[0] for k, v in parse_qs(storage.query).items()}
    return (query.get("endpoint_override") or next(
        (os.environ[e] for e in ENDPOINT_ENVS if os.environ.get(e)), None)
        or f"{storage.scheme.upper()}'s default endpoint")
