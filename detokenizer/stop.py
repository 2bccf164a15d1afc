"""Stop strings over streamed text.

Text arrives in deltas whose boundaries fall anywhere, so a stop string can span
several of them. The checker therefore holds back the longest tail of the text that
could still grow into a stop string: the client never sees part of a stop string,
and any stop string that completes later lies entirely inside held + new text.
"""

from __future__ import annotations


class StopChecker:
    def __init__(self, stop: list[str], include_stop_str_in_output: bool) -> None:
        self._stops = [s for s in stop if s]  # "" would match before any text
        self._include_stop_str = include_stop_str_in_output
        self._held = ""  # text not emitted yet because it may be the start of a stop string

    def check(self, delta: str) -> tuple[str, str | None]:
        """Adds new text; returns (text to emit now, matched stop string or None).

        After a match the request is over: the returned text ends at the stop string
        (or includes it), and whatever followed it is dropped.
        """
        text = self._held + delta
        match = self._first_completed_stop(text)
        if match is not None:
            start, stop = match
            self._held = ""
            end = start + len(stop) if self._include_stop_str else start
            return text[:end], stop
        num_held = self._longest_partial_stop(text)
        self._held = text[len(text) - num_held:]
        return text[:len(text) - num_held], None

    def flush(self) -> str:
        """Releases the held-back tail: the request ended for another reason."""
        held, self._held = self._held, ""
        return held

    def _first_completed_stop(self, text: str) -> tuple[int, str] | None:
        """The stop string that completed first (smallest end); on a tie the longer one."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = text.find(stop)
            if start < 0:
                continue
            candidate = (start + len(stop), start, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return None if best is None else (best[1], best[2])

    def _longest_partial_stop(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
