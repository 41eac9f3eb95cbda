"""Privacy of the updates: differential privacy with an RDP accountant (:mod:`.dp`), and
secure aggregation (:mod:`.secagg`), which hides each client's update from the server.

The public names load on first use (PEP 562): ``import pyfed.privacy`` imports neither
dp-accounting (which pulls in scipy and mpmath) nor ``cryptography``; only the names used do.
"""

__all__ = ["PrivacyLedger", "epsilon", "clip_delta", "gaussian_noise_std",
           "adaptive_noise_multiplier", "noised_clipped_fraction", "update_clipping_norm",
           "default_count_stddev", "validate_dp_config", "delta_norm",
           "noised_unclipped_fraction", "DifferentialPrivacy", "clip_update", "clipped_delta",
           "SecureAggregation"]

# name -> module defining it
_LAZY = {"PrivacyLedger": ".dp.accountant", "epsilon": ".dp.accountant",
         "clip_delta": ".dp.calibration", "gaussian_noise_std": ".dp.calibration",
         "adaptive_noise_multiplier": ".dp.calibration", "noised_clipped_fraction": ".dp.calibration",
         "update_clipping_norm": ".dp.calibration", "default_count_stddev": ".dp.calibration",
         "validate_dp_config": ".dp.calibration", "delta_norm": ".dp.calibration",
         "noised_unclipped_fraction": ".dp.calibration", "DifferentialPrivacy": ".dp.strategy",
         "clip_update": ".dp.client_clipping", "clipped_delta": ".dp.client_clipping",
         "SecureAggregation": ".secagg.strategy"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(__name__ + _LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'pyfed.privacy' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
