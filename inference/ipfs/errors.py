"""Why an adapter could not be fetched. Every error has a short `.reason` code for logs, metrics and job
state; the message says what happened and what an operator can do about it."""

from __future__ import annotations


class FetchError(Exception):
    reason = "fetch-failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BlockIntegrityError(FetchError):
    """A source returned bytes that do not hash to the CID asked for (a lying or corrupt source)."""

    reason = "block-integrity"


class SizeLimitError(FetchError):
    """The DAG, or one response, is larger than the configured cap."""

    reason = "size-limit"


class UnsafeNameError(FetchError):
    """A directory entry name that could escape the target folder, or is not one of the expected files."""

    reason = "unsafe-name"


class DagFormatError(FetchError):
    """The (hash-verified) DAG is not the UnixFS shape expected: wrong node type, inconsistent sizes."""

    reason = "bad-dag"


class BlockUnavailableError(FetchError):
    """The source does not have the block (HTTP 404, Kubo 'not found')."""

    reason = "not-found"


class SourceError(FetchError):
    """Transport trouble: timeout, refused connection, HTTP 5xx. `retryable` says whether the same source
    is worth asking again after a backoff."""

    reason = "source-error"

    def __init__(self, message: str, *, reason: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, reason=reason)
        self.retryable = retryable


class SourcesExhaustedError(FetchError):
    """Every source failed for one block; `.failures` maps each source's name to its last error."""

    reason = "sources-exhausted"

    def __init__(self, cid: str, failures: dict[str, FetchError]) -> None:
        detail = "; ".join(f"{name}: {err.reason} ({err})" for name, err in failures.items()) or "no sources"
        super().__init__(
            f"no source could supply a valid block {cid}: {detail}. Check that the adapter is "
            f"pinned somewhere reachable and that the configured gateways are honest and up."
        )
        self.cid = cid
        self.failures = failures
