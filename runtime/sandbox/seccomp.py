"""The seccomp filter of the python sandbox, as a raw classic-BPF program (what `bwrap --seccomp` loads).

The sandbox's other layers (namespaces, per-run uid, rlimits) leave a few kernel features that an
unprivileged process could still use to escape a bound or reach more kernel surface; this filter
denies them with EPERM:

- new namespaces and mounts (`unshare`, `setns`, `clone` with CLONE_NEW* flags, `mount` and the
  new mount API, `pivot_root`, `chroot`): a user namespace would let a snippet mount its own
  unbounded tmpfs and reach code paths reserved for root;
- memory outside RLIMIT_AS and the sized working directory (`memfd_create`, `memfd_secret`,
  SysV `shmget`);
- debugging other processes (`ptrace`, `process_vm_readv/writev`), kernel keyrings (`keyctl`,
  `add_key`, `request_key`), `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, kernel modules
  and kexec;
- `clone3` answers ENOSYS (its flags live in memory a filter cannot read), so libc falls back to
  `clone`, whose flags are checked; x32 system calls on x86-64 are denied, any other architecture
  (e.g. i386 calls from an x86-64 process) kills the process.

Only x86-64 and aarch64 are known; `program()` raises ValueError elsewhere.
"""

from __future__ import annotations

import errno
import platform
import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "memfd_create", "memfd_secret", "shmget", "ptrace",
    "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
)  # fmt: skip
# System call numbers: asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64).
_COMMON_NEW = {"clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
               "fspick": 433, "mount_setattr": 442, "memfd_secret": 447}  # fmt: skip
NR = {
    "x86_64": {"clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
               "chroot": 161, "memfd_create": 319, "shmget": 29, "ptrace": 101, "process_vm_readv": 310,
               "process_vm_writev": 311, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
               "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246, "kexec_file_load": 320,
               "init_module": 175, "finit_module": 313, "delete_module": 176, **_COMMON_NEW},
    "aarch64": {"clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
                "chroot": 51, "memfd_create": 279, "shmget": 194, "ptrace": 117, "process_vm_readv": 270,
                "process_vm_writev": 271, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
                "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104, "kexec_file_load": 294,
                "init_module": 105, "finit_module": 273, "delete_module": 106, **_COMMON_NEW},
}  # fmt: skip
CLONE_NEW_FLAGS = 0x7E020080  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
X32_SYSCALL_BIT = 0x40000000

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data (little-endian: low half of args[0])


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes:
    """The filter for `machine` (default: this one) as `struct sock_filter[]` bytes."""
    machine = machine or platform.machine()
    if machine not in NR:
        raise ValueError(f"no seccomp filter for architecture {machine!r} (known: {', '.join(NR)})")
    nr = NR[machine]
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    prog = [_ins(_LD_W_ABS, _OFF_ARCH), _ins(_JEQ, AUDIT_ARCH[machine], jt=1), _ins(_RET, _KILL_PROCESS),
            _ins(_LD_W_ABS, _OFF_NR)]  # fmt: skip
    if machine == "x86_64":
        prog += [_ins(_JGE, X32_SYSCALL_BIT, jf=1), _ins(_RET, eperm)]
    for name in DENIED:
        prog += [_ins(_JEQ, nr[name], jf=1), _ins(_RET, eperm)]
    prog += [_ins(_JEQ, nr["clone3"], jf=1), _ins(_RET, enosys)]
    prog += [_ins(_JEQ, nr["clone"], jf=3), _ins(_LD_W_ABS, _OFF_ARG0), _ins(_JSET, CLONE_NEW_FLAGS, jf=1),
             _ins(_RET, eperm), _ins(_RET, _ALLOW)]  # fmt: skip
    return b"".join(prog)
