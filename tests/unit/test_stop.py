"""StopChecker on hand-made deltas: no tokenizer needed."""

from __future__ import annotations

import random

import pytest

from detokenizer.stop import StopChecker

pytestmark = pytest.mark.unit


def feed(checker: StopChecker, deltas: list[str]) -> tuple[list[str], str | None]:
    """Feeds deltas until a stop string matches; returns the emitted pieces and the match."""
    emitted = []
    for delta in deltas:
        text, stop = checker.check(delta)
        emitted.append(text)
        if stop is not None:
            return emitted, stop
    emitted.append(checker.flush())
    return emitted, None


def test_no_stop_strings_passes_text_through() -> None:
    checker = StopChecker([], include_stop_str_in_output=False)
    assert checker.check("hello") == ("hello", None)
    assert checker.check(" world") == (" world", None)
    assert checker.flush() == ""


def test_stop_inside_one_delta_truncates_before_it() -> None:
    checker = StopChecker(["STOP"], include_stop_str_in_output=False)
    assert checker.check("abc STOP def") == ("abc ", "STOP")


def test_stop_inside_one_delta_included_when_asked() -> None:
    checker = StopChecker(["STOP"], include_stop_str_in_output=True)
    assert checker.check("abc STOP def") == ("abc STOP", "STOP")


@pytest.mark.parametrize("include", [False, True])
def test_stop_spanning_deltas_is_never_partly_shown(include: bool) -> None:
    checker = StopChecker(["<end>"], include_stop_str_in_output=include)
    emitted, stop = feed(checker, ["one <", "e", "nd", "> two"])
    assert stop == "<end>"
    # Before the stop completes, nothing of "<end>" has leaked out.
    assert "".join(emitted[:-1]) == "one "
    assert "".join(emitted) == ("one <end>" if include else "one ")


def test_held_tail_released_when_it_is_not_a_stop() -> None:
    checker = StopChecker(["###"], include_stop_str_in_output=False)
    assert checker.check("a#") == ("a", None)
    assert checker.check("#") == ("", None)
    assert checker.check("b") == ("##b", None)


def test_held_tail_flushed_when_request_ends_otherwise() -> None:
    checker = StopChecker(["</answer>"], include_stop_str_in_output=False)
    assert checker.check("42 </ans") == ("42 ", None)
    assert checker.flush() == "</ans"
    assert checker.flush() == ""


def test_several_stops_first_completed_wins() -> None:
    checker = StopChecker(["world", "lo"], include_stop_str_in_output=False)
    # "lo" completes (at index 5) before "world" would (index 11).
    assert checker.check("hello world") == ("hel", "lo")
    checker = StopChecker(["xyz", "hello"], include_stop_str_in_output=True)
    assert checker.check("hello xyz") == ("hello", "hello")


def test_tie_on_end_prefers_the_longer_stop() -> None:
    checker = StopChecker(["c", "abc"], include_stop_str_in_output=False)
    assert checker.check("xxabc") == ("xx", "abc")


def test_overlapping_prefixes_hold_the_longest_candidate() -> None:
    checker = StopChecker(["aab", "ab"], include_stop_str_in_output=False)
    # "aa" could start "aab"; "a" could start either.
    assert checker.check("xaa") == ("x", None)
    assert checker.check("b") == ("", "aab")


def test_self_overlapping_stop_found_after_false_start() -> None:
    checker = StopChecker(["abab"], include_stop_str_in_output=False)
    emitted, stop = feed(checker, ["ab", "a", "bab", "zz"])
    # "ababab": the first "abab" ends at index 4.
    assert stop == "abab"
    assert "".join(emitted) == ""


def test_empty_stop_string_is_ignored() -> None:
    checker = StopChecker([""], include_stop_str_in_output=False)
    assert checker.check("text") == ("text", None)


def _reference_output(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """Character-at-a-time reference: stop at the first position where a stop string ends."""
    for end in range(1, len(text) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(stop):
                return (text[:end] if include else text[:end - len(stop)]), stop
    return text, None


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_match_character_reference(seed: int) -> None:
    rng = random.Random(seed)
    stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
    include = rng.random() < 0.5
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
    deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    checker = StopChecker(stops, include_stop_str_in_output=include)
    emitted, stop = feed(checker, deltas)
    assert ("".join(emitted), stop) == _reference_output(text, stops, include)
