"""Reading the peers' updates from the shared folder, trusting none of them.

A file is picked by its name first (``updates/<node>/<epoch>-<spec>.pyfd``): anything else, or
a name claiming another model, is skipped without being opened. A picked file is read with a
size cap (the largest frame of this model) and decoded by :func:`~.frames.decode_update`;
one that fails, or whose header contradicts its name, is skipped too. Every skip is ONE
warning per file (logger ``"pyfed"``), however often the folder is polled.
"""

from __future__ import annotations

import logging

from ..errors import StoredUpdateError
from ..safe_text import path_component, printable
from ..wire.compression import wire_layout
from ..wire.frame import MAX_HEADER_BYTES, PREFIX_SIZE
from ..wire.messages import NodeUpdate
from ..wire.spec import TensorSpec
from .frames import SPEC_PREFIX, UPDATES, decode_update, parse_update_path
from .storage import FileGone, Folder

logger = logging.getLogger("pyfed")

# Paths warned about, per reader: bounded by the files that ever sat in the folder, which
# the nodes' clean-up keeps bounded in turn; the cap is for a folder someone floods.
MAX_REMEMBERED = 100_000


class PeerReader:
    """Reads the updates of every node but ``own`` for one model (``spec``, ``spec_hash``)."""

    def __init__(self, folder: Folder, own: str, spec: list[TensorSpec], spec_hash: str):
        self.folder = folder
        self.own_folder = path_component(own)
        self.label = printable(own, 60)
        self.spec = spec
        self.spec_hash = spec_hash
        self.max_bytes = PREFIX_SIZE + MAX_HEADER_BYTES + wire_layout(None, spec).body_nbytes
        self._warned: set[str] = set()

    def candidates(self) -> dict[str, list[tuple[int, str]]]:
        """``{node folder: [(epoch, path), ...]}`` of this model's updates by their names,
        newest first; other files are skipped with a warning."""
        found: dict[str, list[tuple[int, str]]] = {}
        for path in self.folder.list(UPDATES):
            parsed = parse_update_path(path)
            if parsed is None:
                self.skip(path, "not a stored update (expected updates/<node>/<epoch>-<spec>"
                          ".pyfd)")
                continue
            node, epoch, spec_prefix = parsed
            if node == self.own_folder:
                continue  # this node's own updates are in memory
            if spec_prefix != self.spec_hash[:SPEC_PREFIX]:
                self.skip(path, f"written for another model (spec {spec_prefix}...; this "
                          f"node's model spec is {self.spec_hash})")
                continue
            found.setdefault(node, []).append((epoch, path))
        for files in found.values():
            files.sort(reverse=True)
        return found

    def load(self, path: str, node: str, epoch: int) -> NodeUpdate | None:
        """The update in ``path`` (node folder ``node``, epoch ``epoch`` by its name), or None
        if it is gone or unusable (then a warning says why, once)."""
        try:
            data = self.folder.get(path, max_bytes=self.max_bytes)
        except FileGone:
            return None  # its node cleaned it up after we listed it: not an error
        try:
            update = decode_update(data, self.spec, self.spec_hash)
        except StoredUpdateError as exc:
            self.skip(path, str(exc))
            return None
        if path_component(update.node) != node or update.epoch != epoch:
            self.skip(path, f"its header says node {printable(update.node, 60)!r} epoch "
                      f"{update.epoch}; its name says otherwise")
            return None
        return update

    def epoch(self, epoch: int, found: dict[str, NodeUpdate]) -> None:
        """Add to ``found`` the usable updates of ``epoch`` from nodes not in it yet."""
        for node, files in self.candidates().items():
            if node in found:
                continue
            for file_epoch, path in files:
                if file_epoch == epoch:
                    update = self.load(path, node, file_epoch)
                    if update is not None:
                        found[node] = update
                    break

    def latest(self) -> dict[str, NodeUpdate]:
        """Every other node's newest usable update (an unusable newest one: the one before)."""
        latest = {}
        for node, files in self.candidates().items():
            for file_epoch, path in files:
                update = self.load(path, node, file_epoch)
                if update is not None:
                    latest[node] = update
                    break
        return latest

    def skip(self, path: str, reason: str) -> None:
        if path in self._warned:
            return
        if len(self._warned) < MAX_REMEMBERED:
            self._warned.add(path)
        logger.warning("node %s: skipping %s: %s (never loaded as code)", self.label,
                       printable(self.folder.where(path), 300), printable(reason, 400))
