"""Serverless federation: nodes that share a folder (local, ``memory://`` or S3) instead of a
server (issue 13). Each node publishes its update as one file in PyFed's wire format and
aggregates its peers' files itself.

The public names load on first use (PEP 562): ``import pyfed.serverless`` imports neither
TensorFlow nor s3fs (nor fsspec), only what the names used need.
"""

__all__ = ["FederatedNode", "ServerFederation", "compare_with_standalone"]

# name -> module defining it. ServerFederation and compare_with_standalone are built by
# another part of the issue (keras.py's helpers); they load the same way.
_LAZY = {"FederatedNode": ".node", "ServerFederation": ".server_federation",
         "compare_with_standalone": ".compare"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = __name__ + _LAZY[name]
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # a dependency of that module is missing: say which
            # A build without that part: an attribute that is not there (so dir()-based
            # tools such as inspect.getmembers pass over it), not a crash.
            raise AttributeError(f"module 'pyfed.serverless' has no attribute {name!r} "
                                 f"({module} is not installed)") from None
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'pyfed.serverless' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
