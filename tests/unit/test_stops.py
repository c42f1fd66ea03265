import pytest

from workers.stops import StopMatcher


def feed_all(pieces, stops):
    m, text, out = StopMatcher(stops), "", []
    for p in pieces:
        text += p
        delta, stopped = m.feed(text)
        out.append(delta)
        if stopped:
            return "".join(out), m.stopped_on
    out.append(m.flush(text))
    return "".join(out), ""


@pytest.mark.parametrize("pieces,stops,expected,stopped_on", [
    (["Hello", " wor", "ld"], [], "Hello world", ""),
    (["Step 1", "\n", "\nStep 2"], ["\n\n"], "Step 1", "\n\n"),
    (["a", "b", "STO", "P", "c"], ["STOP"], "ab", "STOP"),
    (["a", "ST", "x"], ["STOP"], "aSTx", ""),                    # held back, then released
    (["x\n\n", "y"], ["\n\n", "x"], "", "x"),                     # the earliest stop wins
    (["The answer is \\box", "ed{4}"], ["\\boxed"], "The answer is ", "\\boxed"),
    (["ab\ufffd"], [], "ab\ufffd", ""),                            # flushed at the end
])
def test_stop_matching(pieces, stops, expected, stopped_on):
    assert feed_all(pieces, stops) == (expected, stopped_on)


def test_partial_stop_is_held_back_not_emitted():
    m = StopMatcher(["\n\n"])
    assert m.feed("line\n") == ("line", False)
    assert m.feed("line\nmore") == ("\nmore", False)
