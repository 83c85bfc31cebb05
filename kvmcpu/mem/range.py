"""Half-open address ranges (gem5 ``base/addr_range.hh``, without interleaving)."""

from __future__ import annotations

from typing import Any


class AddrRange:
    """The addresses ``[start, start + size)``.

    Args:
        start: first address (non-negative).
        size: number of addresses (positive).

    Raises:
        ValueError: a negative start or a non-positive size.
    """

    __slots__ = ("start", "size")

    def __init__(self, start: int, size: int) -> None:
        if start < 0:
            raise ValueError(f"address range start must be non-negative, got {start:#x}")
        if size <= 0:
            raise ValueError(f"address range size must be positive, got {size}")
        self.start = start
        self.size = size

    @classmethod
    def from_bounds(cls, start: int, end: int) -> AddrRange:
        """The range ``[start, end)``."""
        return cls(start, end - start)

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.start + self.size

    @property
    def last(self) -> int:
        """The last address in the range."""
        return self.start + self.size - 1

    def contains(self, addr: int, size: int = 1) -> bool:
        """True when ``[addr, addr + size)`` lies inside the range."""
        return self.start <= addr and addr + size <= self.start + self.size

    __contains__ = contains

    def overlaps(self, other: AddrRange) -> bool:
        """True when the two ranges share at least one address."""
        return self.start < other.end and other.start < self.end

    def offset(self, addr: int) -> int:
        """``addr`` relative to the start of the range."""
        return addr - self.start

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, AddrRange) and self.start == other.start and self.size == other.size
        )

    def __hash__(self) -> int:
        return hash((self.start, self.size))

    def __lt__(self, other: AddrRange) -> bool:
        return (self.start, self.size) < (other.start, other.size)

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"

    def __repr__(self) -> str:
        return f"AddrRange({self.start:#x}, {self.size:#x})"
