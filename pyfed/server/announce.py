"""What the server tells a new client (WELCOME) and the user (where it listens)."""

from __future__ import annotations

import logging

from ..wire import auth, messages
from ..wire.transport import local_addresses

logger = logging.getLogger("pyfed")


def welcome(server, name: str) -> messages.Welcome:
    """The run's rounds, folder and identity, and the model to build when the client brought
    none (Keras JSON, never a pickle)."""
    return messages.Welcome(
        client_id=name, rounds=server.rounds, run_name=server.run_dir.name, run_id=server.run_id,
        model=server.adapter.describe(), spec_hash=server.spec_hash,
        config={"run_dir": str(server.run_dir.resolve()), "compression": server.codec,
                # The client learns here that rounds will come as SecAgg's stages.
                **({"secure_aggregation": True} if getattr(server.strategy, "secure", False)
                   else {})})


def announce(server) -> None:
    """``PyFed server listening on ...``: on a LAN, the addresses clients should use, and a
    warning when no token guards the federation."""
    if server.multi_system:
        addresses = [a for a in local_addresses() if not a.startswith("127.")]
        server.say(f"PyFed server listening on port {server.port} on every interface; clients "
                   f"should use server_ip = "
                   f"{' or '.join(repr(a) for a in addresses) or '<this machine address>'}")
        if server.gateway.token is None:
            message = ("no token is set: any host on the network can join this federation "
                       f"(set token=..., ${auth.TOKEN_ENVIRONMENT_VARIABLE} or --token-file)")
            logger.warning(message)
            server.say("warning: " + message)
    else:
        server.say(f"PyFed server listening on {server.host}:{server.port}")
    advice = auth.weak_token_warning(server.gateway.token)  # resolve_token logged it already
    if advice is not None:
        server.say("warning: " + advice)
