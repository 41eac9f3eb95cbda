"""The range and shape of every number and name a peer sends, checked where it is decoded.

Trust boundary 1 (DESIGN.md): a number from the network is validated as a type and a range
before any arithmetic touches it. JSON is happy to carry ``10**400``, ``NaN``, ``-Infinity`` or
``true`` where a count belongs, and each of those once crashed the server (``float()`` raised
``OverflowError`` on the round's thread). :func:`check_fields` applies one rule per message
field, called by :func:`pyfed.wire.protocol.decode_header` on every header after its types are
checked, so no layer above ever sees a value outside these bounds. A value that breaks a rule
raises :class:`~pyfed.errors.InvalidValue` naming the message, the field, the rule and the value
received; the frame itself is intact, so the receiver refuses just that message.

The caps on metric names (per message, per round, per run) keep what a peer can invent from
growing the server's memory, checkpoints and TensorBoard logs: one client once sent 50,000 new
names a round and the checkpoint grew quadratically.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from ..errors import InvalidValue
from ..safe_text import printable
from .values import MAX_ABS_VALUE

# Rounds and epochs: far beyond any run (a round a second for 68 years), and TensorBoard steps
# (int64) can never overflow.
MAX_ROUND = 2**31 - 1
MAX_EPOCH = 2**53
# A declared example count: every count up to 2**53 is exact in float64, so weights and their
# sums are exact too. The server's ``max_examples`` (default 10**9) is the tighter bound on a
# client's weight in the mean, checked with the update.
MAX_NUM_EXAMPLES = 2**53
# Losses and metric values: finite and no larger than the largest accepted weight value
# (``values.MAX_ABS_VALUE``, 1e18); a loss beyond it is a diverged or hostile update. Bounded like
# this, an examples-weighted sum of a million of them stays finite in float64.
MAX_ABS_REAL = MAX_ABS_VALUE
# Metric names per message (FIT_RESULT and EVALUATE_RESULT metrics, and history series), and
# per round once the clients' are aggregated. Keras reports one name per compiled metric and
# output (a 10-output model with loss and 2 metrics each has 31); 64 leaves room for that, and
# with the name length it bounds what one result adds to the logs: 64 x 128 characters.
MAX_METRICS = 64
# Characters in a metric name: Keras' longest built-in names (``val_sparse_top_k_categorical_
# accuracy``) have under 40; 128 is also the cap on a client's name.
MAX_METRIC_NAME = 128
# Values in one per-epoch history series: epochs a client trains in one round.
MAX_HISTORY_EPOCHS = 10_000
# Distinct keys in the server's History over a whole run (so in every checkpoint): its own
# (participants, seconds, bytes, clients) plus fit_, eval_ and test_ metrics. New names past it
# are not recorded (a warning says so once), so the history grows linearly with the rounds.
MAX_HISTORY_KEYS = 512
# A model's spec hash (sha256: 64 hex digits) with room for another digest.
MAX_HASH_CHARS = 128
# Tensors in a spec, and dimensions of one (as in the frame's array descriptors).
MAX_TENSORS = 100_000
MAX_NDIM = 32
MAX_DIM = 2**63 - 1
# Python's own default limit on digits in an int parsed from text (sys.int_max_str_digits):
# also enforced here when a process raised or lifted that limit, so a header never makes us
# parse a number of a million digits.
MAX_INT_DIGITS = 4300


def parse_int(text: str) -> int:
    """``json.loads(parse_int=...)``: an int, but never one of more than MAX_INT_DIGITS digits."""
    if len(text) > MAX_INT_DIGITS + 1:
        raise ValueError(f"an integer of {len(text)} digits; at most {MAX_INT_DIGITS}")
    return int(text)


def int_parser():
    """What ``json.loads`` should parse ints with: its own C parser (None) while Python's
    digit limit is in force (the default), :func:`parse_int` if that limit was lifted. A
    Python hook per int costs about 1 us, 70 us for a 60-tensor FIT_RESULT header."""
    limit = sys.get_int_max_str_digits()
    return None if 0 < limit <= MAX_INT_DIGITS else parse_int


# ---------------------------------------------------------------------------------------------
# Describing what was received, in one bounded, escaped line
# ---------------------------------------------------------------------------------------------


def show(value) -> str:
    """A received value for an error message: numbers as numbers (``1e+400`` for a 401-digit
    int, never its digits), anything else as its type name."""
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        return type(value).__name__
    if isinstance(value, float):
        return repr(value)
    if abs(value) < 10**15:
        return str(value)
    digits = str(abs(value))
    return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def _name(text: str) -> str:
    return f"'{printable(text, 40)}'"


# ---------------------------------------------------------------------------------------------
# Rules: each returns None, or what is wrong (the caller says where)
# ---------------------------------------------------------------------------------------------

Rule = Callable[[object], "str | None"]


def integer(low: int, high: int) -> Rule:
    def rule(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer; received {show(value)}"
        if not low <= value <= high:
            return f"must be an integer in [{low}, {high}]; received {show(value)}"
        return None
    return rule


def real(value) -> str | None:
    """A finite number (int or float, never bool) with ``|value| <= MAX_ABS_REAL``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a finite number; received {show(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number; received {show(value)}"
    if not -MAX_ABS_REAL <= value <= MAX_ABS_REAL:
        return f"must be within +-{MAX_ABS_REAL:g}; received {show(value)}"
    return None


def metric_name(name: str) -> str | None:
    if not name:
        return "metric name is empty"
    if len(name) > MAX_METRIC_NAME:
        return (f"metric name {_name(name)} has {len(name)} characters; at most "
                f"{MAX_METRIC_NAME} are accepted")
    if not name.isprintable():
        return f"metric name {_name(name)} contains unprintable characters"
    return None


def _named(kind_of: str, value: dict, each: Rule) -> str | None:
    """A dict of at most MAX_METRICS valid metric names, each value passing ``each``."""
    if len(value) > MAX_METRICS:
        return f"has {len(value)} {kind_of}; at most {MAX_METRICS} are accepted"
    for name, item in value.items():
        problem = metric_name(name)
        if problem:
            return f": {problem}"
        problem = each(item)
        if problem:
            return f"[{_name(name)}]{'' if problem[0] == '[' else ': '}{problem}"
    return None


def metrics(value) -> str | None:
    """``{name: number}``, as FIT_RESULT and EVALUATE_RESULT carry them."""
    return _named("metrics", value, real)


def _series(value) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of numbers; received {type(value).__name__}"
    if len(value) > MAX_HISTORY_EPOCHS:
        return f"has {len(value)} epochs; at most {MAX_HISTORY_EPOCHS} are accepted"
    for index, item in enumerate(value):
        problem = real(item)
        if problem:
            return f"[{index}] {problem}"
    return None


def history(value) -> str | None:
    """``{name: [number per epoch]}``: one round's per-epoch training curves."""
    return _named("history series", value, _series)


def short_text(limit: int) -> Rule:
    def rule(value) -> str | None:
        if value is not None and len(value) > limit:
            return f"has {len(value)} characters; at most {limit} are accepted"
        return None
    return rule


def spec(value) -> str | None:
    """A model spec as HELLO carries it: ``[[name, shape, dtype, path], ...]``."""
    if value is None:
        return None
    if len(value) > MAX_TENSORS:
        return f"has {len(value)} tensors; at most {MAX_TENSORS} are accepted"
    for index, entry in enumerate(value):
        if (not isinstance(entry, list) or len(entry) != 4
                or not all(isinstance(entry[i], str) for i in (0, 2, 3))
                or not isinstance(entry[1], list) or len(entry[1]) > MAX_NDIM
                or not all(integer(0, MAX_DIM)(d) is None for d in entry[1])):
            return (f"[{index}] must be [name, shape, dtype, path] with a shape of at most "
                    f"{MAX_NDIM} non-negative integers; received {printable(repr(entry), 80)}")
    return None


ROUND = integer(0, MAX_ROUND)
EXAMPLES = integer(0, MAX_NUM_EXAMPLES)

# Secure aggregation: every client talks to every other (O(n^2) keys and shares), so a secure
# round has at most this many participants; a ring of at most 64 bits (numpy's widest integer);
# keys and commitments are 32 bytes; a share ciphertext (nonce, two 66-byte shares, indices,
# tag) under 256 bytes.
MAX_SECAGG_PARTICIPANTS = 1024
MAX_SECAGG_CIPHERTEXT_BYTES = 256
SECAGG_INDEX = integer(1, MAX_SECAGG_PARTICIPANTS)


def hex_text(low_bytes: int, high_bytes: int) -> Rule:
    """Lowercase hex of ``low_bytes``..``high_bytes`` bytes."""
    def rule(value) -> str | None:
        if not isinstance(value, str) or not low_bytes * 2 <= len(value) <= high_bytes * 2 \
                or len(value) % 2 or value.strip("0123456789abcdef"):
            shown = f"{len(value)} characters" if isinstance(value, str) else show(value)
            if isinstance(value, str) and value.strip("0123456789abcdef"):
                shown += ", not all lowercase hex digits"
            return (f"must be lowercase hex of {low_bytes}"
                    f"{'' if low_bytes == high_bytes else f'..{high_bytes}'} bytes; received "
                    f"{shown}")
        return None
    return rule


KEY_HEX = hex_text(32, 32)
CIPHERTEXT_HEX = hex_text(1, MAX_SECAGG_CIPHERTEXT_BYTES)


def items(each: Rule, limit: int = MAX_SECAGG_PARTICIPANTS) -> Rule:
    """A list of at most ``limit`` values, each passing ``each``."""
    def rule(value) -> str | None:
        if len(value) > limit:
            return f"has {len(value)} items; at most {limit} are accepted"
        for index, item in enumerate(value):
            problem = each(item)
            if problem:
                return f"[{index}] {problem}"
        return None
    return rule


def peer_keys(entry) -> str | None:
    """``[index, encryption_key_hex, mask_key_hex]``."""
    if not isinstance(entry, list) or len(entry) != 3:
        return "must be [index, encryption_key, mask_key]"
    return SECAGG_INDEX(entry[0]) or KEY_HEX(entry[1]) or KEY_HEX(entry[2])

# kind name -> field -> rule. Fields without a rule are checked for their type only (strings
# from the network are escaped where they are shown, see pyfed.safe_text).
RULES: dict[str, dict[str, Rule]] = {
    "HELLO": {"protocol_version": integer(0, 255), "spec_hash": short_text(MAX_HASH_CHARS),
              "spec": spec},
    "WELCOME": {"rounds": ROUND, "spec_hash": short_text(MAX_HASH_CHARS)},
    "FIT": {"round": ROUND},
    "FIT_RESULT": {"round": ROUND, "num_examples": EXAMPLES, "metrics": metrics,
                   "history": history, "first_epoch": integer(0, MAX_EPOCH)},
    "EVALUATE": {"round": ROUND},
    "EVALUATE_RESULT": {"round": ROUND, "num_examples": EXAMPLES, "loss": real,
                        "metrics": metrics},
    "SECAGG_SETUP": {"round": ROUND, "index": SECAGG_INDEX,
                     "participants": integer(2, MAX_SECAGG_PARTICIPANTS),
                     "threshold": integer(2, MAX_SECAGG_PARTICIPANTS),
                     "modulus_bits": integer(8, 64), "clipping_range": real,
                     "max_weight": real},
    "SECAGG_KEYS": {"round": ROUND, "encryption_key": KEY_HEX, "mask_key": KEY_HEX,
                    "seed_commitment": KEY_HEX},
    "SECAGG_PEERS": {"round": ROUND, "peers": items(peer_keys)},
    "SECAGG_SHARES": {"round": ROUND, "recipients": items(SECAGG_INDEX),
                      "ciphertexts": items(CIPHERTEXT_HEX)},
    "SECAGG_MASKED": {"round": ROUND, "metrics": metrics, "history": history,
                      "first_epoch": integer(0, MAX_EPOCH)},
    "SECAGG_UNMASK": {"round": ROUND, "survivors": items(SECAGG_INDEX),
                      "dropped": items(SECAGG_INDEX), "senders": items(SECAGG_INDEX),
                      "ciphertexts": items(CIPHERTEXT_HEX)},
    "SECAGG_REVEAL": {"round": ROUND, "owners": items(SECAGG_INDEX),
                      "shares": items(hex_text(66, 66))},
    # A stored serverless update (pyfed.serverless.frames): a file from a shared folder is
    # as untrusted as a frame from a socket. A node name is capped like a client's.
    "NODE_UPDATE": {"node": short_text(MAX_METRIC_NAME), "epoch": integer(0, MAX_EPOCH),
                    "num_examples": EXAMPLES, "metrics": metrics,
                    "spec_hash": short_text(MAX_HASH_CHARS),
                    "checksum": short_text(MAX_HASH_CHARS)},
}


def check_fields(kind: str, fields: dict) -> None:
    """Apply ``kind``'s rules to a decoded header's fields (their types already checked).
    Raises :class:`InvalidValue` naming the first field that breaks its rule."""
    for name, rule in RULES.get(kind, {}).items():
        if name in fields:
            problem = rule(fields[name])
            if problem:
                raise InvalidValue(f"{kind} field {name!r}{'' if problem[0] in '[:' else ' '}"
                                   f"{problem}")
