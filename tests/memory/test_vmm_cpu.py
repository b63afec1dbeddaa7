"""CPU virtual memory: reserved ranges cost nothing, committed pages cost what is written,
released pages are given back and fault again."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from podserve.memory.vmm_cpu import CpuVirtualMemory

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resident_bytes(base: int, size: int) -> int:
    """Resident bytes of the mappings inside [base, base + size), from /proc/self/smaps
    (mprotect splits the range into several areas; count them all)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start = int(head.split("-")[0], 16)
                inside = base <= start < base + size
            elif inside and head == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def test_resident_memory_follows_committed_and_written_pages():
    page = 16 * 4096
    vm = CpuVirtualMemory(size=256 * MiB, page_bytes=page, num_physical_pages=1024)
    try:
        assert resident_bytes(vm.base, vm.size) == 0  # a reservation costs no memory
        t = vm.tensor(0, (vm.size // 4,), torch.float32)  # [all of it]; zero-copy, nothing read
        assert resident_bytes(vm.base, vm.size) == 0
        vm.map(0, 256)  # 16 MiB committed
        assert resident_bytes(vm.base, vm.size) < MiB  # committed but untouched: still free
        n = 256 * page // 4
        t[:n] = torch.randn(n)  # write it: now resident
        assert resident_bytes(vm.base, vm.size) >= 16 * MiB
        vm.unmap(128 * page, 128)  # give half back
        assert 8 * MiB <= resident_bytes(vm.base, vm.size) < 9 * MiB
        vm.unmap(0, 128)
        assert resident_bytes(vm.base, vm.size) == 0
        assert vm.num_mapped == 0
    finally:
        del t
        vm.close()


def test_tensor_is_a_zero_copy_view_of_the_range():
    vm = CpuVirtualMemory(size=8 * 4096, page_bytes=4096, num_physical_pages=8)
    try:
        vm.map(4096, 2)
        t = vm.tensor(4096, (2, 1024), torch.float32)  # [2 pages of floats]
        values = torch.randn(2, 1024)
        t.copy_(values)
        raw = (ctypes.c_float * 2048).from_address(vm.base + 4096)
        assert torch.equal(torch.tensor(list(raw)).view(2, 1024), values)
        vm.unmap(4096, 2)
        vm.map(4096, 2)
        assert not t.any(), "a released page must come back zeroed (memory was given back)"
        del t
    finally:
        vm.close()


def test_budget_and_ranges_are_checked():
    vm = CpuVirtualMemory(size=8 * 4096, page_bytes=4096, num_physical_pages=3)
    try:
        vm.map(0, 3)
        with pytest.raises(RuntimeError, match="budget"):
            vm.map(3 * 4096)
        with pytest.raises(ValueError):
            vm.map(100)  # not page-aligned
        with pytest.raises(ValueError):
            vm.unmap(7 * 4096, 2)  # past the end
    finally:
        vm.close()


def test_an_impossible_reservation_says_so():
    with pytest.raises(MemoryError, match="reserve"):
        CpuVirtualMemory(size=1 << 62, page_bytes=4096, num_physical_pages=1)


def _run(snippet: str) -> subprocess.CompletedProcess:
    code = "import torch\nfrom podserve.memory.vmm_cpu import CpuVirtualMemory\n" + snippet
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)


def test_touching_uncommitted_or_released_memory_faults():
    """Run in subprocesses: a fault kills the process, which is the point."""
    setup = textwrap.dedent("""
        vm = CpuVirtualMemory(size=4 * 4096, page_bytes=4096, num_physical_pages=4)
        t = vm.tensor(0, (4, 1024), torch.float32)
        vm.map(0, 1)
        t[0].fill_(1.0)
    """)
    ok = _run(setup + "print(float(t[0].sum()))\n")
    assert ok.returncode == 0 and ok.stdout.strip() == b"1024.0", ok.stderr
    never = _run(setup + "print(float(t[1].sum()))\n")  # page 1 was never committed
    assert never.returncode == -11, never
    released = _run(setup + "vm.unmap(0, 1)\nprint(float(t[0].sum()))\n")
    assert released.returncode == -11, released
