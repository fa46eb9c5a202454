"""`eth_getLogs` ranges that adapt to what a provider allows.

Hosted providers cap a log query by block range, by result count, by response size or by time, and say
so in their own words (and some with a suggested range). A refused range is shrunk, to the provider's
suggestion or the limit it names when it gives one, else halved, and grows back after a run of successes,
never above `[chain].max_log_range`."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What real providers answer when a query is too big (geth, erigon, Alchemy, Infura, QuickNode, Ankr,
# Cloudflare, Blast, BlockPi, Chainstack, dRPC ...), lower-cased fragments.
_TOO_LARGE = (
    "query returned more than",
    "log response size exceeded",
    "exceed maximum block range",
    "block range is too wide",
    "block range too large",
    "range is too large",
    "range too large",
    "is limited to a",
    "exceeds maximum rpc range",
    "maximum block range",
    "too many results",
    "response size should not",
    "response is too big",
    "limit exceeded",
    "query timeout exceeded",
    "request entity too large",
    "413",
    "block range extends beyond",
)
_SUGGESTED = re.compile(r"\[\s*(0x[0-9a-f]+)\s*,\s*(0x[0-9a-f]+)\s*\]")
_LIMIT_BEFORE = re.compile(
    r"(\d[\d,]*)\s*(k?)\s*-?\s*(?:blocks?\s*)?range"
)  # "a 10,000 range", "2K block range"
_LIMIT_AFTER = re.compile(r"range[^\d\[]{0,30}?(\d[\d,]*)\s*(k?)\b")  # "block range: 5000", "max is 10k"


class LogRangeRefused(Exception):
    """The provider refused a range as too large; the watcher retries a smaller one at once."""


def is_range_refusal(error: BaseException) -> bool:
    text = str(error).lower()
    return any(f in text for f in _TOO_LARGE)


@dataclass
class AdaptiveRange:
    maximum: int
    size: int = 0
    grow_after: int = 8  # successes in a row before the range doubles again
    _successes: int = 0
    shrinks: int = 0

    def __post_init__(self) -> None:
        if self.maximum < 1:
            raise ValueError("max_log_range must be >= 1")
        self.size = self.size or self.maximum

    def refused(self, error: BaseException, start: int, tried: int) -> None:
        """The range [start, start + tried) was refused: pick the next size from what the provider said."""
        text = str(error).lower()
        suggested = _SUGGESTED.search(text)
        limit = None
        if suggested and int(suggested.group(1), 16) == start:
            limit = int(suggested.group(2), 16) - start + 1
        else:
            m = _LIMIT_BEFORE.search(text) or _LIMIT_AFTER.search(text)
            if m:
                limit = int(m.group(1).replace(",", "")) * (1000 if m.group(2) else 1)
        new = min(limit, tried - 1) if limit and 0 < limit < tried else tried // 2
        self.size = max(1, new)
        self._successes = 0
        self.shrinks += 1

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.grow_after and self.size < self.maximum:
            self.size = min(self.maximum, self.size * 2)
            self._successes = 0
