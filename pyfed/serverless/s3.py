"""What is specific to S3 folders: bounded waiting, and botocore's errors said in one line.

``storage.py`` opens every folder through fsspec; for ``s3://`` it uses these:

- :func:`s3_storage_options` adds bounded timeouts and retries to the caller's options, and
  :func:`bound_retries` bounds s3fs's own, so an unreachable endpoint fails in seconds.
  botocore's defaults (60 s to connect and to read, 5 legacy attempts) times s3fs's 5 retries
  would keep a node waiting for minutes before saying anything.
- :func:`check_s3_folder` asks S3 once, when the folder is opened, whether the endpoint answers,
  the credentials are accepted and the bucket exists, so a node fails before training.
- :func:`s3_storage_error` turns whatever botocore, aiohttp or s3fs raised into a
  :class:`~pyfed.errors.StorageError` whose message is one line naming the folder's URL and the
  endpoint, never a traceback of botocore internals.

Nothing here imports s3fs or botocore at module level: importing ``pyfed.serverless`` must not
need the ``pyfed[s3]`` extra. botocore is imported only to classify an error it raised.
"""

from __future__ import annotations

import errno
import os
import socket

from ..errors import StorageError
from ..safe_text import printable

# Timeouts in seconds. Connecting to a live endpoint takes milliseconds; 5 s leaves room for a
# slow network. A node waits at most read_timeout for one answer (sending an upload is not
# counted, only the wait for S3's reply).
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 10
# AWS's standard retry mode (backoff with jitter on throttling, 5xx and connection errors),
# 3 attempts in all: what AWS SDKs do by default, bounded.
RETRIES = {"total_max_attempts": 3, "mode": "standard"}
# s3fs retries read timeouts and dropped connections itself, 5 times, around botocore's
# attempts: 2 keep a transient error retried without multiplying the wait for a hung server.
# Worst cases: refused in about a second, no answer to connect in 3 x 5 s, a server that
# accepts and never answers in 2 x 3 x 10 s.
S3FS_RETRIES = 2

# S3 error codes that mean "these credentials are wrong", as opposed to "not allowed".
CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity",
})
DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
_MAX_CHAIN = 16  # exception chains are short; the bound only guards against a cycle


def s3_storage_options(storage_options: dict | None) -> dict:
    """``storage_options`` for s3fs with bounded timeouts and retries.

    Whatever the caller set wins: the defaults only fill the ``config_kwargs`` keys left out."""
    options = dict(storage_options or {})
    config = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
              "retries": dict(RETRIES)}
    config.update(options.get("config_kwargs") or {})
    options["config_kwargs"] = config
    return options


def bound_retries(fs) -> None:
    """At most S3FS_RETRIES retries by s3fs itself (its ``retries`` attribute, 5 by default,
    has no constructor argument)."""
    fs.retries = min(getattr(fs, "retries", S3FS_RETRIES), S3FS_RETRIES)


def endpoint_of(storage_options: dict | None) -> str:
    """The endpoint requests go to, for messages: the options' ``endpoint_url`` (s3fs takes
    it at the top level or in ``client_kwargs``), else the one botocore takes from the
    environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``), else AWS itself."""
    options = storage_options or {}
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    if not endpoint and os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return printable(endpoint, limit=120) if endpoint else "AWS"


def check_s3_folder(fs, root: str, url: str, storage_options: dict | None) -> None:
    """One listing of the folder: raises StorageError unless the endpoint answers, accepts the
    credentials and has the bucket. An empty or missing prefix is fine (a new folder)."""
    try:
        fs.ls(root, detail=False, refresh=True)
    except FileNotFoundError as exc:
        if "/" in root.strip("/") and not is_missing_bucket(exc):
            return  # the bucket is there; the prefix has no files yet
        raise s3_storage_error(exc, url, storage_options) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the URL
        raise s3_storage_error(exc, url, storage_options) from None


def s3_storage_error(exc: BaseException, url: str, storage_options: dict | None) -> StorageError:
    """A StorageError for ``exc``, raised while using the folder at ``url``."""
    return StorageError(s3_error_message(exc, url, storage_options))


def s3_error_message(exc: BaseException, url: str, storage_options: dict | None) -> str:
    """One line saying what went wrong with ``url`` and at which endpoint."""
    from botocore import exceptions as boto

    endpoint = endpoint_of(storage_options)
    url = printable(url, limit=200)
    chain = _chain(exc)
    for error in chain:
        if isinstance(error, boto.ClientError):
            return _client_error_message(error, url, endpoint)
        if isinstance(error, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return (f"no S3 credentials for {url}: pass storage_options key and secret, "
                    f"or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(error, (boto.EndpointConnectionError, boto.ConnectTimeoutError,
                              boto.ReadTimeoutError, boto.ConnectionClosedError,
                              boto.ProxyConnectionError)):
            reason = _network_reason(chain) or _first_line(error)
            return f"cannot reach S3 at {endpoint} for {url}: {reason}"
    reason = _network_reason(chain)
    if reason is not None:  # a socket error s3fs or aiohttp passed on without botocore
        return f"cannot reach S3 at {endpoint} for {url}: {reason}"
    if isinstance(exc, FileNotFoundError):
        return f"not found in S3 at {endpoint}: {url} ({_first_line(exc)})"
    if isinstance(exc, PermissionError):
        return f"S3 at {endpoint} denied access to {url} ({_first_line(exc)})"
    return f"S3 at {endpoint} failed for {url}: {type(exc).__name__}: {_first_line(exc)}"


def _client_error_message(error, url: str, endpoint: str) -> str:
    details = getattr(error, "response", None) or {}
    code = str((details.get("Error") or {}).get("Code") or "")
    if code in CREDENTIAL_CODES:
        return f"S3 at {endpoint} refused the credentials for {url} ({printable(code)})"
    if code in DENIED_CODES:
        return f"S3 at {endpoint} denied access to {url} ({printable(code)})"
    if code == "403":  # an answer without a body (HEAD): S3 does not say which
        return (f"S3 at {endpoint} refused access to {url} "
                f"(403 Forbidden: wrong credentials or no permission)")
    if code == "NoSuchBucket":
        bucket = (details.get("Error") or {}).get("BucketName") or _bucket_of(url)
        return f"S3 bucket '{printable(bucket, limit=70)}' does not exist at {endpoint} (for {url})"
    message = (details.get("Error") or {}).get("Message") or _first_line(error)
    return f"S3 at {endpoint} failed for {url}: {printable(code or 'error')}: {_first_line(message)}"


def _network_reason(chain: list[BaseException]) -> str | None:
    """What the socket said, in words (refused, timed out, unknown host...); None if the chain
    holds no network error."""
    from botocore import exceptions as boto

    for error in chain:
        os_error = getattr(error, "os_error", None)  # aiohttp keeps the socket error here
        for candidate in (error, os_error):
            if isinstance(candidate, ConnectionRefusedError) or \
                    getattr(candidate, "errno", None) == errno.ECONNREFUSED:
                return "connection refused"
            if isinstance(candidate, socket.gaierror):
                return "host name not found"
    for error in chain:
        if isinstance(error, boto.ConnectTimeoutError):
            return "timed out connecting"
        if isinstance(error, boto.ReadTimeoutError):
            return "connected, but no answer within the read timeout"
        if isinstance(error, boto.ConnectionClosedError):
            return "the connection was closed"
        if isinstance(error, boto.ProxyConnectionError):
            return "the proxy refused the connection"
        if isinstance(error, TimeoutError):
            return "timed out"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """exc, then what caused it (``raise from``) or was being handled, oldest last."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def is_missing_bucket(exc: BaseException) -> bool:
    """Whether S3 said the bucket does not exist (s3fs raises FileNotFoundError for that and
    for a missing key alike; botocore's error, kept as the cause, tells them apart)."""
    for error in _chain(exc):
        details = getattr(error, "response", None)
        if isinstance(details, dict):
            return (details.get("Error") or {}).get("Code") == "NoSuchBucket"
    return False


def _bucket_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return printable(lines[0] if lines else type(text).__name__, limit=200)
