"""SecAgg/SecAgg+ protocol logic, both sides, pure: no sockets, no threads.

:class:`ClientSecAgg` and :class:`ServerSecAgg` hold one round's state each; the wire layer
carries their outputs between processes. They live in two modules (one job each, and each
under the size cap) and are re-exported here, the one import path the wiring uses.
"""

from pyfed.privacy.secagg.client import ClientSecAgg
from pyfed.privacy.secagg.crypto import DecryptionError, SecAggError
from pyfed.privacy.secagg.server import ServerSecAgg
from pyfed.privacy.secagg.shares import CIPHERTEXT_BYTES, SHARE_BYTES

__all__ = ["ClientSecAgg", "ServerSecAgg", "SecAggError", "DecryptionError",
           "CIPHERTEXT_BYTES", "SHARE_BYTES"]
