"""A set of disjoint half-open byte ranges: which parts of a file are dirty."""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class IntervalSet:
    """Sorted, disjoint, non-adjacent ``[start, end)`` ranges; adding merges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        i = bisect.bisect_left(self._ends, start)  # first range that ends at or after start
        j = bisect.bisect_right(self._starts, end)  # ranges from i to j-1 touch [start, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def clip(self, limit: int) -> None:
        """Forget everything at or beyond ``limit`` (a truncate)."""
        i = bisect.bisect_left(self._ends, limit + 1)
        del self._starts[i + 1 :], self._ends[i + 1 :]
        if i < len(self._starts):
            if self._starts[i] >= limit:
                del self._starts[i], self._ends[i]
            else:
                self._ends[i] = limit

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def first_from(self, offset: int) -> int | None:
        """The smallest dirty offset >= ``offset``, or None."""
        i = bisect.bisect_right(self._ends, offset)
        if i == len(self._starts):
            return None
        return max(self._starts[i], offset)

    def overlaps(self, start: int, end: int) -> bool:
        first = self.first_from(start)
        return first is not None and first < end

    def split(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """Cover ``[start, end)`` with pieces ``(lo, hi, dirty)`` in order."""
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end:
            if i < len(self._starts) and self._starts[i] <= pos:
                hi = min(self._ends[i], end)
                yield pos, hi, True
                i += 1
            else:
                nxt = self._starts[i] if i < len(self._starts) else end
                hi = min(nxt, end)
                yield pos, hi, False
            pos = hi
