"""The bubblewrap command line that boxes one ``exec`` run.

The box has its own user, pid, network, ipc, uts and cgroup namespaces (the
network one only has a loopback device of its own, unless the run may use the
network); a root of its own holding the host's ``/usr`` and the ``/bin``,
``/lib``… links or folders read-only, ``/etc/ld.so.cache`` and
``/etc/alternatives`` (plus resolver and certificate files when networked),
a ``/proc`` of its pid namespace, a minimal ``/dev``, and size-capped tmpfs
for ``/tmp``, ``/dev/shm`` and the work folder ``/sandbox`` (the program's
files are copied in from descriptors). Nothing else of the host is visible: no
data dir, no checkout, no home, no other sandbox. It runs in a new session with
a cleared environment, no capabilities and, where bubblewrap supports it, no
way to create further user namespaces. bubblewrap's init is pid 1 of the box:
when the program ends, or bubblewrap is killed, every process left in the box
is killed by the kernel.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

WORKDIR = "/sandbox"
TMPDIR = "/tmp"
SHM_BYTES = 16 * 1024 * 1024
INSIDE_NOBODY = 65534  # the uid shown inside when the host uid is the worker's own
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_ALWAYS = ("/etc/ld.so.cache", "/etc/alternatives")
ETC_NETWORK = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
)
HELP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Bwrap:
    """A bubblewrap binary and the options it understands."""

    path: str
    disable_userns: bool  # --disable-userns (bubblewrap >= 0.8)
    sized_tmpfs: bool  # --size before --tmpfs (bubblewrap >= 0.5)


def find(program: str) -> Bwrap | str:
    """The bubblewrap at ``program`` (a name on PATH or a path), or why there is none."""
    path = program if os.path.isabs(program) else _which(program)
    if path is None or not os.access(path, os.X_OK):
        return (
            f"bubblewrap ({program!r}) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        )
    try:
        done = subprocess.run(
            [path, "--help"], capture_output=True, timeout=HELP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} --help failed: {exc}"
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    if "--die-with-parent" not in text or "--clearenv" not in text:
        return f"{path} is too old (needs --die-with-parent and --clearenv: bubblewrap >= 0.5)"
    return Bwrap(path, "--disable-userns" in text, "--size" in text)


def _which(name: str) -> str | None:
    for folder in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _system() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        where = Path("/", name)
        if where.is_symlink():
            args += ["--symlink", os.readlink(where), str(where)]
        elif where.is_dir():
            args += ["--ro-bind", str(where), str(where)]
    return args


def command(
    bwrap: Bwrap,
    argv: list[str],
    files: dict[str, int],
    env: dict[str, str],
    *,
    uid: int,
    network: bool,
    tmp_bytes: int,
) -> list[str]:
    """bwrap's argv for running ``argv`` in ``WORKDIR``; ``files`` maps names there to
    readable descriptors (passed to bwrap) whose content is copied in."""
    cmd = [bwrap.path, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    cmd += ["--unshare-cgroup-try"]
    if not network:
        cmd += ["--unshare-net"]
    if bwrap.disable_userns:
        cmd += ["--disable-userns"]
    cmd += ["--uid", str(uid), "--gid", str(uid), "--hostname", "sandbox"]
    cmd += _system()
    for path in ETC_ALWAYS + (ETC_NETWORK if network else ()):
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for where, size in (("/dev/shm", min(SHM_BYTES, tmp_bytes)), (TMPDIR, tmp_bytes)):
        cmd += (["--size", str(size)] if bwrap.sized_tmpfs else []) + ["--tmpfs", where]
    cmd += (["--size", str(tmp_bytes)] if bwrap.sized_tmpfs else []) + ["--tmpfs", WORKDIR]
    for name, fd in files.items():
        cmd += ["--file", str(fd), f"{WORKDIR}/{name}"]
    cmd += ["--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--new-session", "--die-with-parent", "--cap-drop", "ALL", "--", *argv]
    return cmd
