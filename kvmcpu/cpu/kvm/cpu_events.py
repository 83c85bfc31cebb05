"""What the debugging events of a KVM CPU share (:mod:`.debug`, :mod:`.watch`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ..thread import ThreadContext

if TYPE_CHECKING:
    from .debug import KvmDebug

Callback = Callable[[ThreadContext], Any]


class _CpuEvent:
    """What PC, data and instruction-count events share: a callback, a name, the CPU it is
    scheduled on (None once removed) and an idempotent :meth:`remove`."""

    __slots__ = ("callback", "name", "cpu")

    def __init__(self, cpu: KvmDebug, callback: Callback, name: str) -> None:
        self.callback = callback
        self.name = name
        self.cpu: Optional[KvmDebug] = cpu

    @property
    def scheduled(self) -> bool:
        return self.cpu is not None

    def remove(self) -> None:
        """Remove the event (idempotent)."""
        if self.cpu is not None:
            self._unschedule(self.cpu)

    def _unschedule(self, cpu: KvmDebug) -> None:
        raise NotImplementedError


def check_callback(callback: object) -> None:
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
