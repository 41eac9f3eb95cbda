"""The data split ``experiment`` and ``partition`` share, so the same options give the same
files."""

from __future__ import annotations

from ..errors import ConfigurationError


# Which partition option belongs to which scheme; None means "not given on the command line".
SCHEME_OPTIONS = {"alpha": ("--alpha", "dirichlet", 0.5),
                   "min_size": ("--min-size", "dirichlet", 10),
                   "shards_per_client": ("--shards-per-client", "shards", 2)}


def split_data(args, x, y, scheme: str | None, scheme_flag: str):
    """The split `experiment` and `partition` share, so the same options give the same files.

    No scheme, or iid: PyFed's equal split (``split_for_clients``), exactly as before. Otherwise
    ``pyfed.data.split``, holding out 1/(clients+1) for the server unless --server-fraction.
    """
    from ..data.datasets import split, split_for_clients

    options = {}
    for dest, (flag, owner, default) in SCHEME_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None and scheme != owner:
            # A forgotten --scheme would otherwise run a whole experiment on the wrong split.
            raise ConfigurationError(f"{flag} applies to {scheme_flag} {owner} only; received "
                                     f"{flag} {value} with {scheme_flag} {scheme or 'not given'}")
        options[dest] = default if value is None else value
    if scheme in (None, "iid"):
        return split_for_clients(x, y, args.clients, seed=args.seed,
                                 server_fraction=args.server_fraction)
    fraction = args.server_fraction if args.server_fraction is not None else 1 / (args.clients + 1)
    return split(x, y, args.clients, scheme, server_fraction=fraction, seed=args.seed, **options)


def print_split(clients_target, server_target) -> None:
    from ..data.datasets import summary

    rows = {f"client_{i}": t for i, t in enumerate(clients_target, start=1)}
    print(summary({**rows, "server": server_target}, print_it=False), flush=True)
