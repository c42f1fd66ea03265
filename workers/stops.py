"""Incremental stop-string matching for streamed text.

`StopMatcher.feed(full_text)` is called with the whole decoded completion so far and returns
the new text that is safe to emit: text that could still turn into a stop string is held back.
When a stop string appears, the completion is cut before it.
"""
from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.emitted = 0            # characters of the completion already released
        self.stopped_on = ""        # the stop string that matched, once one has

    def _hold_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (new safe text, stopped). After stopped is True, do not call again."""
        cut = -1
        search_from = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        for s in self.stops:
            pos = text.find(s, search_from)
            if pos >= 0 and (cut < 0 or pos < cut):
                cut, self.stopped_on = pos, s
        if cut >= 0:
            delta = text[self.emitted:cut] if cut > self.emitted else ""
            self.emitted = max(self.emitted, cut)
            return delta, True
        safe_end = len(text) - self._hold_back(text)
        # NOTE: a trailing U+FFFD means an incomplete multi-byte character; wait for the rest.
        while safe_end > self.emitted and text[safe_end - 1] == "\ufffd":
            safe_end -= 1
        if safe_end <= self.emitted:
            return "", False
        delta = text[self.emitted:safe_end]
        self.emitted = safe_end
        return delta, False

    def flush(self, text: str) -> str:
        """At the end of generation (no stop matched): release everything still held back."""
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta
