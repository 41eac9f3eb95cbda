"""Strings from the network, made safe for the two places they end up: text and paths.

Trust boundary 4 (DESIGN.md): every string a peer sends is escaped before it reaches a log, the
terminal, a file name or a path. These two functions are the only way such a string gets there.

- :func:`printable` for logs, progress lines and error messages: control characters (newlines
  above all, which would forge a whole log line), escape sequences and other unprintable code
  points become visible escapes, and the text is cut to a bounded length.
- :func:`path_component` for file and folder names: one component, never ``..`` or absolute,
  injective (``a/b``, ``a_b`` and ``a:b`` stay three different folders), and at most 255 bytes
  (the limit of ext4 and most file systems), so a long name keeps its own folder too.
"""

from __future__ import annotations

import hashlib

DEFAULT_LIMIT = 200
MAX_COMPONENT_BYTES = 255
# Characters kept as they are in a path component: portable on every file system we know.
_PATH_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def printable(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` with every unprintable character escaped (``\\n``, ``\\x1b``, ``\\u2028``...),
    cut to about ``limit`` characters with a marker saying how much was left out."""
    text = text if isinstance(text, str) else str(text)
    if len(text) > limit:
        text = f"{text[:limit]}...[{len(text) - limit} more characters]"
    if text.isprintable():
        return text
    # unicode_escape escapes the backslash too, so an escape in the output cannot be faked.
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text.replace("\\", "\\\\"))


def path_component(name: object) -> str:
    """One safe, distinct path component for ``name`` (a client name, a run name...).

    Characters outside ``[A-Za-z0-9._-]`` are percent-encoded (``%`` itself included), so two
    different names never share a folder; a leading dot is encoded too (no ``.``, ``..`` or
    hidden files). A name whose encoding exceeds 255 bytes keeps a readable prefix and a hash of
    the whole name."""
    name = name if isinstance(name, str) else str(name)
    encoded = "".join(c if c in _PATH_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
                      for c in name)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if not encoded:
        return "%00empty"
    if len(encoded) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        encoded = f"{encoded[:MAX_COMPONENT_BYTES - 18].rstrip('%')}~{digest}"
    return encoded


def single_component(name: object, what: str, error: type[Exception] = ValueError) -> str:
    """``name`` itself, if it can be one folder name as written; else ``error`` saying why.

    For names a user chose (``run_name``): kept as written, so ``--run-name "lr 0.1"`` is the
    folder the user expects, but never a path: no separator, no ``.``/``..``, nothing
    unprintable, at most 255 bytes. A client receiving a run name applies the same rule (an honest
    server cannot send anything else) and still builds its folder with :func:`path_component`.
    """
    if not isinstance(name, str) or not name:
        problem = "must be a non-empty string"
    elif name in (".", ".."):
        problem = "must not be '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "must be one folder name, without '/' or '\\'"
    elif not name.isprintable():
        problem = "must be printable (no newline, tab or control character)"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        problem = f"must be at most {MAX_COMPONENT_BYTES} bytes in UTF-8"
    else:
        return name
    # repr escapes what is unprintable; the cut keeps a hostile 1 MB name out of the message.
    raise error(f"{what} {problem}; received {name!r:.100}")
