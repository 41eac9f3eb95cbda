"""One shared folder, local or remote, through fsspec: what serverless nodes exchange updates in.

``open_folder`` takes a plain path, ``file://``, ``memory://`` or ``s3://bucket/prefix`` (s3fs,
imported only then) and checks once that the folder can be reached, so a wrong endpoint or
credentials fail at once, in one line naming the URL, not at the first update.

Writes are atomic: a reader sees the old file or the new one, never half of one. Locally the
bytes go to a hidden temporary name beside the target, then one ``os.replace``; elsewhere one
``pipe_file`` (a single PUT on S3, where an object appears whole or not at all).

Every error of the file system (OSError, botocore's, fsspec's) becomes a
:class:`~pyfed.errors.StorageError` naming the URL; a file that vanished between a listing and
its read is a :class:`FileGone` (peers delete their old updates while others read).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets

from ..errors import ConfigurationError, StorageError
from ..safe_text import printable

__all__ = ["FileGone", "Folder", "open_folder"]

# Exceptions from these libraries are the file system's, not bugs of ours: mapped to
# StorageError like OSError. Anything else propagates as it is.
_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp", "urllib3")


class FileGone(StorageError):
    """The file is not there (any more): a peer removed its old update after we listed it."""


class Folder:
    """Files under one root, named by '/'-separated paths relative to it."""

    def __init__(self, fs, root: str, url: str, endpoint: str | None = None):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.endpoint = endpoint
        self.local = "file" in _protocols(fs)

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    # -- operations -------------------------------------------------------------------------

    def put(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` atomically (parents created as needed)."""
        full = self._full(path)
        with self._errors("write", path):
            if self.local:
                _atomic_local_write(full, data)
            else:
                self.fs.pipe_file(full, bytes(data))

    def get(self, path: str, max_bytes: int | None = None) -> bytes:
        """The file's bytes; with ``max_bytes``, at most ``max_bytes + 1`` of them are read (a
        caller that expects at most ``max_bytes`` learns the file is larger without reading a
        hostile 10 GB file into memory)."""
        with self._errors("read", path):
            end = None if max_bytes is None else max_bytes + 1
            return bytes(self.fs.cat_file(self._full(path), start=0 if end else None, end=end))

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of the files under ``prefix``, sorted; [] when it does not exist.
        Hidden names (a local write's temporary file) are left out."""
        base = self._full(prefix) if prefix.strip("/") else self.root
        with self._errors("list", prefix or "."):
            self.fs.invalidate_cache(base)  # s3fs caches listings; peers write all the time
            try:
                found = self.fs.find(base, detail=False)
            except FileNotFoundError:
                return []
        strip = len(self.root) + 1
        paths = [p[strip:] for p in found if p.startswith(self.root + "/")]
        return sorted(p for p in paths if not any(part.startswith(".") for part in p.split("/")))

    def remove(self, path: str) -> None:
        """Delete the file at ``path``; a missing file is fine (someone removed it first)."""
        with self._errors("remove", path):
            try:
                self.fs.rm_file(self._full(path))
            except FileNotFoundError:
                pass

    # -- helpers ----------------------------------------------------------------------------

    def _full(self, path: str) -> str:
        parts = path.strip("/").split("/")
        # Paths are built by this package from checked names; refuse anything that would
        # leave the folder all the same.
        if any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"{self.url}: bad relative path {printable(path, 80)!r}")
        return f"{self.root}/{'/'.join(parts)}"

    def where(self, path: str = "") -> str:
        """``path`` as a URL, for messages."""
        return f"{self.url.rstrip('/')}/{path}" if path else self.url

    @contextlib.contextmanager
    def _errors(self, action: str, path: str):
        try:
            yield
        except FileNotFoundError as exc:
            raise FileGone(self._message(action, path, exc)) from None
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001  (only the file system's own are mapped)
            if isinstance(exc, OSError) or _from_storage_library(exc):
                raise StorageError(self._message(action, path, exc)) from None
            raise

    def _message(self, action: str, path: str, exc: BaseException) -> str:
        at = f" (endpoint {self.endpoint})" if self.endpoint else ""
        reason = str(exc).strip() or type(exc).__name__
        return (f"cannot {action} {self.where(path)}{at}: {type(exc).__name__}: "
                f"{printable(reason, 300)}")


def open_folder(folder: str | os.PathLike, storage_options: dict | None = None) -> Folder:
    """The shared folder ``folder`` (created when missing; for ``s3://``, the bucket too),
    checked to be reachable. Raises :class:`StorageError` in one line naming the URL (and the
    endpoint, when ``storage_options`` names one) when it is not, and
    :class:`ConfigurationError` for an ``s3://`` URL without s3fs installed."""
    options = dict(storage_options or {})
    url = os.fspath(folder) if isinstance(folder, os.PathLike) else folder
    if not isinstance(url, str) or not url:
        raise ConfigurationError("folder must be a path or an fsspec URL; received "
                                 f"{folder!r:.100}")
    if "://" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme in ("s3", "s3a"):
        if importlib.util.find_spec("s3fs") is None:
            raise ConfigurationError(f"{url} needs s3fs: pip install 'pyfed[s3]'")
        # s3fs retries every call 5 times itself; botocore's default 5 attempts inside each
        # made an unreachable endpoint take 25 s to report. 2 keep a transient error retried.
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"mode": "standard", "max_attempts": 2})
        options["config_kwargs"] = config
    endpoint = ((options.get("client_kwargs") or {}).get("endpoint_url")
                or options.get("endpoint_url"))
    import fsspec.core  # here, so that importing pyfed.serverless stays light

    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # an unknown protocol, a missing backend
        raise ConfigurationError(f"cannot open folder {printable(url, 200)}: "
                                 f"{printable(exc)}") from None
    except Exception as exc:  # noqa: BLE001  (bad options for the backend)
        if isinstance(exc, OSError) or _from_storage_library(exc) or isinstance(exc, TypeError):
            raise StorageError(f"cannot open folder {printable(url, 200)}: "
                               f"{type(exc).__name__}: {printable(exc, 300)}") from None
        raise
    result = Folder(fs, root, url, endpoint)
    with result._errors("open", ""):
        fs.makedirs(result.root, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # an empty S3 prefix does not "exist"
            fs.ls(result.root, detail=False)
    return result


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _from_storage_library(exc: BaseException) -> bool:
    return any(type(exc).__module__.startswith(m) for m in _STORAGE_MODULES)


def _atomic_local_write(full: str, data: bytes) -> None:
    """A hidden temporary file beside ``full`` (so the rename stays on one file system),
    then one ``os.replace``: readers see the old file or the new one, never a partial one."""
    directory, name = os.path.split(full)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(8)}")
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the rename must not land before the bytes (a crash)
        os.replace(temporary, full)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
