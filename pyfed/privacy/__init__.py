"""Privacy of the updates (issue 14): differential privacy with an RDP accountant, and (later)
secure aggregation.

The public names load on first use (PEP 562): ``import pyfed.privacy`` imports neither
dp-accounting (which pulls in scipy and mpmath) nor ``cryptography``; only the names used do.
"""

__all__ = ["PrivacyLedger", "epsilon", "clip_delta", "gaussian_noise_std",
           "adaptive_noise_multiplier", "noised_clipped_fraction", "update_clipping_norm",
           "default_count_stddev", "validate_dp_config", "delta_norm",
           "noised_unclipped_fraction", "DifferentialPrivacy", "clip_update", "clipped_delta",
           "SecureAggregation"]

# name -> module defining it
_LAZY = {"PrivacyLedger": ".accountant", "epsilon": ".accountant",
         "clip_delta": ".dp_math", "gaussian_noise_std": ".dp_math",
         "adaptive_noise_multiplier": ".dp_math", "noised_clipped_fraction": ".dp_math",
         "update_clipping_norm": ".dp_math", "default_count_stddev": ".dp_math",
         "validate_dp_config": ".dp_math", "delta_norm": ".dp_math",
         "noised_unclipped_fraction": ".dp_math", "DifferentialPrivacy": ".dp",
         "clip_update": ".client_clipping", "clipped_delta": ".client_clipping",
         "SecureAggregation": ".secure_aggregation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(__name__ + _LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'pyfed.privacy' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
