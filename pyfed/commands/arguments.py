"""Option values the parser checks (argparse ``type=`` functions), and the option groups that
several subcommands share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; received {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535]; received {text}")
    return value


def keras_verbosity(text: str):
    if text == "auto":
        return text
    if text in ("0", "1", "2"):
        return int(text)
    raise argparse.ArgumentTypeError(f"must be auto, 0, 1 or 2; received {text}")


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0; received {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; received {text}")
    return value


def open_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1); received {text}")
    return value


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
