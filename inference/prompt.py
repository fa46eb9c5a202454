"""How a job's prompt becomes token ids: one function, so every backend and the test oracle agree."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = True) -> list[int]:
    """Chat models get their chat template with a generation prompt; others get the raw text."""
    if chat and tokenizer.chat_template:
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


def decode_output(tokenizer: PreTrainedTokenizerBase, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True)


class PromptRejected(ValueError):
    """The engine will never serve this input (deterministic: retrying cannot help). `reason` is a short
    machine-readable kind: not-utf8, empty, too-long."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_prompt(
    tokenizer: PreTrainedTokenizerBase, raw: bytes, max_tokens: int, max_positions: int, *, chat: bool = True
) -> list[int]:
    """The token ids the engine will run for a job's input bytes, or PromptRejected: exactly the checks the
    engine applies, so a node can refuse before it stakes a claim."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptRejected(
            "not-utf8",
            f"input is not UTF-8 text ({e.reason} at byte {e.start}): this node serves text prompts",
        ) from None
    ids = encode_prompt(tokenizer, text, chat=chat)
    check_length(len(ids), max_tokens, max_positions)
    return ids


def check_length(prompt_tokens: int, max_tokens: int, max_positions: int) -> None:
    if prompt_tokens == 0:
        raise PromptRejected("empty", "the prompt encodes to zero tokens: send a non-empty prompt")
    if prompt_tokens + max_tokens > max_positions:
        raise PromptRejected(
            "too-long",
            f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds the model's {max_positions} "
            "positions: shorten the prompt or lower max_tokens",
        )


def max_output_bytes_per_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the UTF-8 bytes one generated token adds to the decoded output. Byte-level BPE
    tokens stand for raw bytes; decoding keeps ASCII bytes as they are and turns every other byte into at
    most 3 output bytes (a multi-byte character, or U+FFFD for a fragment), so a token adds at most
    (ASCII bytes) + 3 x (other bytes). Special tokens are skipped in the output."""
    special = set(tokenizer.all_special_ids)
    byte_decoder = _byte_decoder()
    worst = 1
    for token_id, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token_id in special or piece is None:
            continue
        byte_level = all(c in byte_decoder for c in piece)
        raw = bytes(byte_decoder[c] for c in piece) if byte_level else piece.encode()
        worst = max(worst, sum(1 if b < 0x80 else 3 for b in raw))
    return worst


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (printable stand-ins for the 256 bytes), inverted."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 stand-ins, in no particular order
    # GPT-2's mapping: printable bytes stand for themselves, the others are shifted to 256 + n in byte order
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    assert set(table) == set(alphabet), "tokenizers' byte-level alphabet changed"
    return table
