"""A small seccomp filter for sandboxed code, as the raw cBPF program bwrap's ``--seccomp`` loads.

Namespaces and an unprivileged uid already keep candidate code away from the host; this
filter closes what they leave open to an unprivileged process:

* **new namespaces** (``unshare``, ``setns``, ``clone``/``clone3`` with namespace flags):
  a nested user namespace would make the code root of its own namespaces, exposing the
  kernel's mount, network and BPF interfaces, and would let it mount a tmpfs of any
  size (memory outside ``RLIMIT_AS``);
* **memory outside ``RLIMIT_AS``**: ``memfd_create``, ``memfd_secret`` and System V
  shared memory (``shmget``) allocate memory that is never mapped, so the address-space
  limit does not see it;
* **kernel attack surface** an ordinary program never needs: ``mount`` and the new mount
  API, ``pivot_root``, ``chroot``, ``ptrace``, ``process_vm_*``, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring``, keyrings, module loading,
  ``kexec``, ``open_by_handle_at``, ``reboot``, ``swapon``, ``acct``, ``quotactl``,
  ``syslog``, ``vhangup``.

Refused calls fail with ``EPERM`` (``clone3`` with ``ENOSYS``, so that libc falls back to
``clone``, whose flags a cBPF filter can read). Calls of another ABI (i386 or x32 on an
x86-64 kernel) are refused altogether. Written by hand, without libseccomp: the program
is a flat list of comparisons, built from the syscall tables below for x86-64 and
AArch64; on other architectures :func:`filter_program` returns ``None`` and the sandbox
runs without it (documented in ``docs/security.md``).
"""

from __future__ import annotations

import platform
import struct

__all__ = ["filter_program"]

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_EPERM, _ENOSYS = 1, 38

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0_LOW = 0, 4, 16

#: Namespace flags of clone(2): NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME.
_CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080

_REFUSED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv",
    "process_vm_writev", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "memfd_create", "memfd_secret", "shmget", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "open_by_handle_at", "name_to_handle_at", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_tree", "move_mount", "mount_setattr", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
)  # fmt: skip

# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
_TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
            "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "memfd_create": 319,
            "memfd_secret": 447, "shmget": 29, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
            "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304, "name_to_handle_at": 303,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428, "move_mount": 429,
            "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179, "syslog": 103,
            "vhangup": 153, "clone": 56, "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219, "add_key": 217,
            "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "memfd_create": 279,
            "memfd_secret": 447, "shmget": 194, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
            "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265, "name_to_handle_at": 264,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428, "move_mount": 429,
            "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60, "syslog": 116,
            "vhangup": 58, "clone": 220, "clone3": 435,
        },
    ),
}  # fmt: skip
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one) as bytes, or ``None`` when the
    architecture has no syscall table here."""
    machine = (machine or platform.machine()).lower()
    machine = _ALIASES.get(machine, machine)
    if machine not in _TABLES:
        return None
    audit_arch, numbers = _TABLES[machine]
    refused = sorted({numbers[name] for name in _REFUSED})
    deny, allow = _insn(_RET_K, _RET_ERRNO | _EPERM), _insn(_RET_K, _RET_ALLOW)

    # Laid out so that every jump goes forward to one of the return instructions at the
    # end: [checks...] ALLOW, DENY(EPERM), DENY(ENOSYS), DENY(other ABI).
    body: list[tuple[int, int, str | None, str | None]] = []  # (code, k, jump-if-true target, jump-if-false target)
    body.append((_LD_W_ABS, _OFFSET_ARCH, None, None))
    body.append((_JEQ_K, audit_arch, None, "other_abi"))
    body.append((_LD_W_ABS, _OFFSET_NR, None, None))
    if machine == "x86_64":
        body.append((_JGE_K, 0x40000000, "other_abi", None))  # the x32 ABI
    for number in refused:
        body.append((_JEQ_K, number, "eperm", None))
    body.append((_JEQ_K, numbers["clone3"], "enosys", None))
    body.append((_JEQ_K, numbers["clone"], "clone_flags", None))
    body.append((_JEQ_K, 0, "allow", "allow"))  # an unconditional jump to ALLOW
    # clone: refuse any namespace flag in its first argument (low 32 bits).
    tail = [
        (_LD_W_ABS, _OFFSET_ARG0_LOW, None, None),
        (_JSET_K, _CLONE_NAMESPACE_FLAGS, "eperm", "allow"),
    ]
    returns = {"allow": allow, "eperm": deny, "enosys": _insn(_RET_K, _RET_ERRNO | _ENOSYS), "other_abi": deny}
    positions = {"clone_flags": len(body)}
    position = len(body) + len(tail)
    for name in ("allow", "eperm", "enosys", "other_abi"):
        positions[name] = position
        position += 1

    def jump(target: str | None, index: int) -> int:
        if target is None:
            return 0
        offset = positions[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError("seccomp program too long for an 8-bit jump")
        return offset

    program = b""
    for index, (code, k, if_true, if_false) in enumerate([*body, *tail]):
        program += _insn(code, k, jump(if_true, index), jump(if_false, index))
    for name in ("allow", "eperm", "enosys", "other_abi"):
        program += returns[name]
    return program
