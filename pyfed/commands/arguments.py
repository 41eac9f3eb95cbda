"""Option values the parser checks (argparse ``type=`` functions), and the option groups that
several subcommands share."""

from __future__ import annotations

import argparse


def _checked(name: str, convert, acceptable, expected: str):
    """An argparse ``type=``: ``convert`` the text, then refuse a value that is not
    ``acceptable`` with what was expected. (argparse names the function in its own errors.)"""
    def parse(text: str):
        value = convert(text)
        if not acceptable(value):
            raise argparse.ArgumentTypeError(f"must be {expected}; received {text}")
        return value

    parse.__name__ = name
    return parse


positive_int = _checked("positive_int", int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked("non_negative_int", int, lambda v: v >= 0, "an integer >= 0")
port_number = _checked("port_number", int, lambda v: 0 <= v <= 65535, "in [0, 65535]")
positive_float = _checked("positive_float", float, lambda v: 0 < v < float("inf"),
                          "a number > 0")
open_fraction = _checked("open_fraction", float, lambda v: 0 < v < 1, "in (0, 1)")


def keras_verbosity(text: str):
    if text == "auto":
        return text
    if text in ("0", "1", "2"):
        return int(text)
    raise argparse.ArgumentTypeError(f"must be auto, 0, 1 or 2; received {text}")


PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "by_label")  # pyfed.data.partitioners.SCHEMES


def token_option(p) -> None:
    p.add_argument("--token-file", help="file holding the federation's shared token (else "
                                        "$PYFED_TOKEN; never put the token itself on a command line)")


def partition_options(p, scheme_flag: str) -> None:
    """Options of the non-IID schemes; None when not given, so split_data can tell."""
    p.add_argument("--alpha", type=positive_float,
                   help=f"with {scheme_flag} dirichlet: the concentration; 0.1 gives each client "
                        "few classes, 100 is near IID (default: 0.5)")
    p.add_argument("--shards-per-client", type=positive_int,
                   help=f"with {scheme_flag} shards: shards per client, so at most this many "
                        "classes each (default: 2)")
    p.add_argument("--min-size", type=non_negative_int,
                   help=f"with {scheme_flag} dirichlet: redraw until every client has at least "
                        "this many examples (default: 10)")
    p.add_argument("--server-fraction", type=open_fraction,
                   help="share of the data held out as the server's test set (default: "
                        "1/(clients+1), the size PyFed's equal split gives it)")
