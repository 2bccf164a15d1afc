"""Wire types between the processes: one module per channel, msgpack via msgspec.

- ``engine_input``: frontend and detokenizer -> engine core.
- ``engine_output``: engine core -> detokenizer.
- ``frontend_input``: detokenizer -> frontend.

Every message is a tagged, array-like msgspec Struct, so one decoder per socket
reads the channel's union and the receiver dispatches on the type. No pickle.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Codec:
    """msgpack encoder + a decoder for one channel's union of message types."""

    def __init__(self, union: Any) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(union)

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self._encoder.encode(msg)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)
