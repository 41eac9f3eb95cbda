"""A round's logs (the flat dict History records) seen as TensorBoard's sections.

``fit_loss`` is ``fit/loss``; the counters are ``round/…`` (``round_seconds`` is
``round/seconds``); ``clients`` (a list of names) is no scalar. An asynchronous version adds
``async_…`` (``async/staleness_mean``…) and ``client_updates`` (``async/client_updates/<name>``,
each client's updates so far); its ``staleness`` list is no scalar. Differential privacy adds
``epsilon`` (``privacy/epsilon``) and ``dp_…`` (``privacy/clipping_norm``, ``privacy/noise_std``).
"""

from __future__ import annotations

SECTIONS = ("fit", "test", "eval")
COUNTERS = {"participants": "participants", "round_seconds": "seconds", "bytes_in": "bytes_in",
            "bytes_out": "bytes_out"}
# Differential privacy's (pyfed.privacy.DifferentialPrivacy.round_logs): epsilon spent so far.
PRIVACY = {"epsilon": "privacy/epsilon", "dp_clipping_norm": "privacy/clipping_norm",
           "dp_noise_std": "privacy/noise_std"}


def sections(logs: dict) -> dict[str, dict[str, float]]:
    """``{"fit": {...}, "test": {...}, "eval": {...}}``: each section present in the logs."""
    found: dict[str, dict[str, float]] = {}
    for key, value in logs.items():
        section, _, name = key.partition("_")
        if section in SECTIONS and name:
            found.setdefault(section, {})[name] = value
    return found


def counters(logs: dict) -> dict[str, float]:
    return {short: logs[key] for key, short in COUNTERS.items() if key in logs}


def scalars(logs: dict) -> dict[str, float]:
    """The server's scalars for the round: ``fit/loss``, ``test/accuracy``, ``round/seconds``."""
    values = {f"{section}/{name}": value
              for section, named in sections(logs).items() for name, value in named.items()}
    values.update({f"round/{name}": value for name, value in counters(logs).items()})
    values.update({tag: logs[key] for key, tag in PRIVACY.items() if key in logs})
    values.update({f"async/{key[len('async_'):]}": value for key, value in logs.items()
                   if key.startswith("async_")})
    values.update({f"async/client_updates/{name}": count
                   for name, count in logs.get("client_updates", {}).items()})
    return values
