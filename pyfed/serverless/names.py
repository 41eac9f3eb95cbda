"""One node per name in a shared folder: a marker file each node claims and keeps fresh.

Two nodes with one name would overwrite each other's updates (they share a subfolder), and
each would count the other's epochs as its own. So a node writes ``nodes/<name>.json`` =
``{"instance": <random hex>, "time": <unix time>}`` when it starts and again at every update:

- a node that starts while another instance's marker is fresher than ``timeout`` seconds is
  refused at once (:class:`~pyfed.errors.DuplicateNameError`);
- two that start at the same moment both write; the one whose marker was overwritten finds
  out at its next update and stops with the same error. So they refuse each other.

A stopped node's marker goes stale after ``timeout`` seconds (or is removed by ``close()``),
and the name is free again.
"""

from __future__ import annotations

import json
import math
import secrets
import time

from ..errors import DuplicateNameError
from ..safe_text import path_component
from .storage import FileGone, Folder

MARKERS = "nodes"
# A marker is a few dozen bytes; anything larger in its place is not one of ours.
MAX_MARKER_BYTES = 4096


class NameClaim:
    """This process's claim on ``name`` in ``folder``."""

    def __init__(self, folder: Folder, name: str, timeout: float):
        self.folder = folder
        self.name = name
        self.timeout = timeout
        self.instance = secrets.token_hex(8)
        self.path = f"{MARKERS}/{path_component(name)}.json"

    def claim(self) -> None:
        """Refuse the name if another live instance holds it; else take it."""
        marker = self._read()
        if marker is not None and marker[0] != self.instance:
            age = time.time() - marker[1]
            if age < self.timeout:
                raise DuplicateNameError(
                    f"another node named {self.name!r} is already using the folder "
                    f"{self.folder.url} (its marker {self.path} was written {max(age, 0):.0f} s "
                    f"ago); choose another name, or wait {self.timeout:g} s if that node has "
                    "stopped")
        self._write()

    def refresh(self) -> None:
        """Keep the claim fresh; raise if another instance has taken the name over."""
        marker = self._read()
        if marker is not None and marker[0] != self.instance:
            raise DuplicateNameError(
                f"another node named {self.name!r} took over the name in the folder "
                f"{self.folder.url} (its marker {self.path} is not this node's); two nodes "
                "must not share a name: stopping this one")
        self._write()

    def release(self) -> None:
        """Remove the marker if it is still ours (a successor's claim is left alone)."""
        marker = self._read()
        if marker is not None and marker[0] == self.instance:
            self.folder.remove(self.path)

    def _write(self) -> None:
        data = json.dumps({"instance": self.instance, "time": time.time()}).encode("utf-8")
        self.folder.put(self.path, data)

    def _read(self) -> tuple[str, float] | None:
        """``(instance, time)`` of the marker, or None if there is none or it is not a marker
        (garbage, too large): no node of ours wrote that (writes are atomic), so it claims
        nothing and is overwritten."""
        try:
            data = self.folder.get(self.path, max_bytes=MAX_MARKER_BYTES)
        except FileGone:
            return None
        if len(data) > MAX_MARKER_BYTES:
            return None
        try:
            parsed = json.loads(data.decode("utf-8"))
            instance, written = parsed["instance"], float(parsed["time"])
            if not isinstance(instance, str) or not math.isfinite(written):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return instance, written
