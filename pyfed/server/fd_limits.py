"""Limits that come from the machine: how many connections the open-file limit leaves room for.

Every connection is a file descriptor, and so is everything else the server opens while it
runs: each client's TensorBoard event file, the server's own, the checkpoint's temporary file,
the final model, logs, and TensorBoard's pipes. A default ``max_connections`` above what the
limit holds lets idle connections take the descriptors those need (accept() then fails with
EMFILE, and so does the next checkpoint). So the default is derived from the soft limit
(``RLIMIT_NOFILE``) at start-up:

    max_connections = (soft limit - descriptors already open - FD_HEADROOM) // 2

halved because a client that trains also holds its TensorBoard event file open on the server.
With the common soft limit of 1024 that is about 470; raise the limit (``ulimit -n``) for more.
"""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # pragma: no cover - Windows has no RLIMIT_NOFILE
    resource = None

# Descriptors kept free for the server's own files: the checkpoint's temporary and final files,
# the final model, the server's TensorBoard writer, log files, a TensorBoard process's pipes,
# TLS certificate files, and whatever a user callback opens.
FD_HEADROOM = 64
# With no limit at all (RLIM_INFINITY), or no way to read it: the old fixed default.
FALLBACK_MAX_CONNECTIONS = 1024


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when there is none (or it cannot be read)."""
    if resource is None:
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_descriptors() -> int:
    """How many descriptors this process has open now (0 where that cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(folder)) - 1)  # listdir's own descriptor
        except OSError:
            continue
    return 0


def default_max_connections() -> int:
    soft = open_file_limit()
    if soft is None:
        return FALLBACK_MAX_CONNECTIONS
    return max(1, (soft - open_descriptors() - FD_HEADROOM) // 2)
