"""Token ids in, newly completed text out, one request at a time.

Byte-level BPE splits a multi-byte UTF-8 character over several tokens, and some
decoders (SentencePiece) drop a leading space at the start of a decode. Both are
handled by decoding a small window of tokens again and again: the window starts at
tokens whose text was already emitted (the "prefix"), so their decoded text can be
subtracted, and it ends with the tokens not yet emitted. While the window's text
ends in U+FFFD the last character may still be incomplete, so nothing is emitted.
After each emission the window is cut down to the tokens of that emission, so one
step decodes only a handful of tokens no matter how long the output grows.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"

# Prompt tokens decoded as context before the first output token: enough for any
# decoder that treats the start of a decode specially, cheap to decode.
NUM_PROMPT_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        # Fast tokenizers ignore spaces_between_special_tokens; slow ones honour it.
        self._decode_kwargs = {
            "skip_special_tokens": skip_special_tokens,
            "spaces_between_special_tokens": spaces_between_special_tokens,
        }
        context = self._prompt_context(prompt_token_ids)
        # Window of token ids: [0, self._read_offset) were emitted, the rest are held back.
        self._window: list[int] = context
        self._read_offset = len(context)
        self._prefix_text = self._decode(context)

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, **self._decode_kwargs) if token_ids else ""

    def _prompt_context(self, prompt_token_ids: list[int]) -> list[int]:
        context = list(prompt_token_ids[-NUM_PROMPT_CONTEXT_TOKENS:])
        # A prompt ending inside a character would merge with the first output bytes and
        # the output text would no longer be the decode of the output tokens alone.
        if self._decode(context).endswith(REPLACEMENT_CHAR):
            return []
        return context

    def add_tokens(self, token_ids: list[int]) -> str:
        """Appends tokens; returns the text they complete (may be empty)."""
        if not token_ids:
            return ""
        self._window.extend(token_ids)
        text = self._decode(self._window)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # maybe half a character: wait for the bytes that complete it
        return self._emit(text)

    def flush(self) -> str:
        """Returns all held-back text, incomplete characters included (as U+FFFD)."""
        if len(self._window) == self._read_offset:
            return ""
        return self._emit(self._decode(self._window))

    def _emit(self, window_text: str) -> str:
        new_text = window_text[len(self._prefix_text):]
        # The tokens just emitted become the prefix of the next window.
        self._window = self._window[self._read_offset:]
        self._read_offset = len(self._window)
        self._prefix_text = self._decode(self._window)
        return new_text
