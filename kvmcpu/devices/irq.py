"""Interrupt plumbing: numbered lines into an interrupt controller.

A device holds an :class:`IrqLine` and raises, lowers or pulses it; the line
forwards the level to its :class:`InterruptController`. Two controllers exist:

* the userspace 8259A pair (:class:`kvmcpu.devices.pic.PicPair`), which the
  CPU model polls (``has_pending``/``acknowledge``) when the VM has no
  in-kernel irqchip;
* :class:`KernelIrqChip`, which hands the level to KVM's in-kernel irqchip
  through a callback (the System passes ``vm.irq_line``).

Lines are edge-sensitive at the PIC (ISA): :meth:`IrqLine.pulse` is a rising
edge followed by a falling one.
"""

from __future__ import annotations

from typing import Callable, Dict, Protocol, runtime_checkable

__all__ = ["InterruptController", "IrqLine", "KernelIrqChip", "NullInterruptController"]


@runtime_checkable
class InterruptController(Protocol):
    """Anything that takes interrupt request levels on numbered lines."""

    def set_irq(self, line: int, level: bool) -> None:
        """Drive input ``line`` to ``level`` (True = asserted)."""
        ...


class NullInterruptController:
    """A controller that records levels and delivers nothing (unconnected devices)."""

    def __init__(self) -> None:
        self.levels: Dict[int, bool] = {}

    def set_irq(self, line: int, level: bool) -> None:
        self.levels[line] = level


class IrqLine:
    """One interrupt request line of a device.

    Args:
        controller: where the level goes (None: an unconnected line, levels are
            only remembered; :meth:`connect` it later).
        line: the controller input number (IRQ 4 for COM1).
    """

    __slots__ = ("controller", "line", "level", "raised_count")

    def __init__(self, controller: InterruptController | None, line: int) -> None:
        if line < 0:
            raise ValueError(f"IRQ line number must be non-negative, got {line}")
        self.controller = controller
        self.line = line
        #: The level the device drives now.
        self.level = False
        #: Number of rising edges so far.
        self.raised_count = 0

    def connect(self, controller: InterruptController | None) -> None:
        """Attach the line to ``controller`` (and drive the current level there)."""
        self.controller = controller
        if controller is not None and self.level:
            controller.set_irq(self.line, True)

    def set(self, level: bool) -> None:
        """Drive the line to ``level``; does nothing when it is already there."""
        level = bool(level)
        if level == self.level:
            return
        self.level = level
        if level:
            self.raised_count += 1
        if self.controller is not None:
            self.controller.set_irq(self.line, level)

    def raise_(self) -> None:
        """Assert the line (``raise`` is a Python keyword)."""
        self.set(True)

    assert_ = raise_

    def lower(self) -> None:
        """Deassert the line."""
        self.set(False)

    def pulse(self) -> None:
        """A rising then a falling edge: one edge-triggered interrupt."""
        if self.level:
            self.set(False)
        self.set(True)
        self.set(False)

    def __repr__(self) -> str:
        return f"<IrqLine {self.line} {'high' if self.level else 'low'}>"


class KernelIrqChip:
    """An :class:`InterruptController` backed by KVM's in-kernel irqchip.

    Args:
        irq_line: called as ``irq_line(irq, level)`` with level 0 or 1 (the
            System passes ``vm.irq_line``, which wraps KVM_IRQ_LINE).
    """

    def __init__(self, irq_line: Callable[[int, int], object]) -> None:
        self._irq_line = irq_line
        #: The last level sent per line.
        self.levels: Dict[int, bool] = {}

    def set_irq(self, line: int, level: bool) -> None:
        self.levels[line] = bool(level)
        self._irq_line(line, 1 if level else 0)

    def __repr__(self) -> str:
        return "<KernelIrqChip>"
