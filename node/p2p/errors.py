"""Exceptions of the peer network. Each message says what an operator can do about it."""

from __future__ import annotations

from inference.ipfs import errors as fetch_errors


class P2PError(Exception):
    """Base class for node.p2p errors."""


# Subclasses of the fetcher's errors, so inference.ipfs.fetcher treats a peer like any other source.
class BadBlockError(P2PError, fetch_errors.BlockIntegrityError):
    """A peer sent bytes that do not hash to the CID asked for, or broke the protocol; it gets dropped."""


class BlockUnavailableError(P2PError, fetch_errors.BlockUnavailableError):
    """No asked peer had the block (DONT_HAVE, timeout, disconnect, or every peer banned)."""


class MessageTooLargeError(P2PError, fetch_errors.SizeLimitError):
    """A peer sent a message over the configured size limit; the stream is closed."""


class IdentityFileError(P2PError):
    """The libp2p identity key file is unreadable, malformed or has unsafe permissions."""


class NotStartedError(P2PError):
    """The P2P node was used before `start()` or after `stop()`."""
