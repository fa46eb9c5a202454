"""Every way a broadcast can fail, classified from what real clients answer (geth, erigon, nethermind,
besu, reth, anvil and hosted providers), so the transaction manager handles each one on purpose.

Chainlink's transaction manager does the same with per-client regexes; here one table of lower-case
fragments is enough: the first class whose fragment appears in the message wins."""

from __future__ import annotations

import asyncio
from enum import StrEnum


class BroadcastError(StrEnum):
    ALREADY_KNOWN = "already_known"  # the node has it: nothing to do
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce was used: mined (ours) or taken by another tx
    NONCE_TOO_HIGH = "nonce_too_high"  # a gap below us: fill it
    REPLACEMENT_UNDERPRICED = "replacement_underpriced"  # a tx with this nonce is pending: bump more
    UNDERPRICED = "underpriced"  # below the base fee or the node's minimum: wait for fees, bump
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the key cannot pay gas: pause claiming, alert
    TXPOOL_FULL = "txpool_full"  # the node sheds load: back off
    TRANSPORT = "transport"  # no answer (timeout, connection): retry, it may have arrived
    FATAL = "fatal"  # the node will never take these bytes (bad signature, gas limit, chain id)
    OTHER = "other"  # unknown: back off and retry, report it


_FRAGMENTS: list[tuple[BroadcastError, tuple[str, ...]]] = [
    (
        BroadcastError.ALREADY_KNOWN,
        (
            "already known",
            "known transaction",
            "alreadyknown",
            "already imported",
            "already exists",
            "transaction already in pool",
            "already in mempool",
        ),
    ),
    (
        BroadcastError.REPLACEMENT_UNDERPRICED,
        (
            "replacement transaction underpriced",
            "replacement fee too low",
            "replacementnotallowed",
            "could not replace existing tx",
            "transaction with the same hash was already",
        ),
    ),
    (
        BroadcastError.NONCE_TOO_LOW,
        (
            "nonce too low",
            "nonce has already been used",
            "oldnonce",
            "nonce is too low",
            "invalid nonce; got",
            "tx nonce is lower",
        ),
    ),
    (BroadcastError.NONCE_TOO_HIGH, ("nonce too high", "noncegap", "nonce gap", "tx nonce is higher")),
    (
        BroadcastError.INSUFFICIENT_FUNDS,
        (
            "insufficient funds",
            "insufficient balance",
            "sender doesn't have enough funds",
            "insufficientfunds",
            "not enough funds",
        ),
    ),
    (
        BroadcastError.UNDERPRICED,
        (
            "underpriced",
            "max fee per gas less than block base fee",
            "fee cap less than block base fee",
            "maxfeepergas too low",
            "gas price too low",
            "feetoolow",
            "fee too low",
            "less than block base fee",
            "max fee per gas lower than",
            "below minimum",
        ),
    ),
    (
        BroadcastError.TXPOOL_FULL,
        (
            "txpool is full",
            "transaction pool is full",
            "too many transactions",
            "pool limit",
            "in-flight transaction limit",
            "mempool is full",
            "rate limit",
            "too many requests",
            "429",
        ),
    ),
    (
        BroadcastError.FATAL,
        (
            "invalid sender",
            "invalid signature",
            "exceeds block gas limit",
            "intrinsic gas too low",
            "invalid chain id",
            "chain id mismatch",
            "tx type not supported",
            "oversized data",
        ),
    ),
]


def classify_broadcast_error(error: BaseException) -> BroadcastError:
    """The class of a failed `eth_sendRawTransaction` (an exception from web3 or the transport)."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
        return BroadcastError.TRANSPORT
    text = f"{type(error).__name__} {error}".lower()
    for kind, fragments in _FRAGMENTS:
        if any(f in text for f in fragments):
            return kind
    if any(f in text for f in ("timeout", "timed out", "connection", "all rpc endpoints failed")):
        return BroadcastError.TRANSPORT
    return BroadcastError.OTHER
