"""The README's low-level example on both backends (keeps the README true)."""

from __future__ import annotations

import re
from pathlib import Path

from kvmcpu.backends import HltExit, IoExit, get_backend

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_low_level_example(backend_name: str) -> None:
    text = README.read_text()
    # The example's machine code is the one the README shows.
    match = re.search(r'bytes\.fromhex\("([0-9a-f ]+)"\)', text)
    assert match is not None
    code = bytes.fromhex(match.group(1))
    assert code == bytes.fromhex("b0 34 ba f8 03 ee f4")
    with get_backend(backend_name) as kvm, kvm.create_vm() as vm:
        ram = vm.add_ram(0x0, 2 << 20)
        ram[0x1000:0x1000 + len(code)] = code
        vcpu = vm.create_vcpu(0)
        vcpu.set_real_mode(cs=0, ip=0x1000)
        ex = vcpu.run()
        assert isinstance(ex, IoExit)
        assert repr(ex) == "IoExit(port=0x3f8, size=1, count=1, is_write=True, data=b'4')"
        assert repr(ex) in text
        ex2 = vcpu.run()
        assert isinstance(ex2, HltExit)
        assert repr(ex2) == "HltExit()"
