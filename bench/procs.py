"""The benchmark's processes: pinning, children stopped on every way out, and their CPU and memory from /proc.

The proxy (or the floor) runs on ``PROXY_CPU``; the load client, the mock upstream and helpers on ``CLIENT_CPU``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU = 0
CLIENT_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Whether this process could pin itself to ``CLIENT_CPU`` (the report says so).
PINNED = {"ok": False}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------


def _libc_prctl_deathsig() -> None:
    """Child side: get SIGKILL when the benchmark dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def pin(cpu: int) -> bool:
    """Pin the calling process to ``cpu`` when it is available (not on a 1-CPU machine)."""
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0) and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})
        return True
    return False


class Children:
    """Every subprocess the benchmark starts; all are stopped on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], *, cpu: int, log_path: Path, env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> subprocess.Popen[bytes]:
        # All CPUs first (this process is pinned to the client's), then the child's own.
        all_cpus = set(range(os.cpu_count() or 1))

        def setup() -> None:
            _libc_prctl_deathsig()
            if hasattr(os, "sched_setaffinity"):
                try:
                    os.sched_setaffinity(0, all_cpus)
                except OSError:
                    pass
                pin(cpu)

        logf = open(log_path, "wb")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=stdin,
            stdout=stdout if stdout is not None else logf, stderr=logf, preexec_fn=setup,
        )
        logf.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 3.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)  # Sanic stops cleanly on SIGINT
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            try:
                self.stop(proc, timeout=2.0)
            except Exception:
                proc.kill()


def cpu_seconds(pid: int, part: str = "all") -> float:
    """utime + stime of a process (all its threads), in seconds; ``part`` "user" or "system": one of them."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    return {"all": user + system, "user": user, "system": system}[part] / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (user + nice + system ticks, steal ticks) from /proc/stat."""
    out = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3].isdigit():
                f = line.split()
                vals = [int(x) for x in f[1:]]
                out[int(f[0][3:])] = (vals[0] + vals[1] + vals[2], vals[7] if len(vals) > 7 else 0)
    return out


class Meter:
    """One phase: the proxy's CPU seconds, and how busy CPU 0 was with anything else."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.c0 = cpu_seconds(pid) if pid else 0.0
        self.s0 = core_ticks()
        self.t0 = time.perf_counter()
        self.cpu = float("nan")
        self.others = float("nan")

    def stop(self) -> Meter:
        wall = time.perf_counter() - self.t0
        if self.pid:
            self.cpu = cpu_seconds(self.pid) - self.c0
        s1 = core_ticks()
        if PROXY_CPU in s1 and PROXY_CPU in self.s0:
            busy = (s1[PROXY_CPU][0] - self.s0[PROXY_CPU][0]) / CLK_TCK
            steal = (s1[PROXY_CPU][1] - self.s0[PROXY_CPU][1]) / CLK_TCK
            mine = self.cpu if self.pid else 0.0
            self.others = max(0.0, busy - mine + steal) / wall * 100
        return self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pct(values: list[int], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1)))))
    return float(ordered[k])


def tree_cpu(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (``--workers 2``: the manager and its workers), seconds."""
    return sum(tree_cpu_each(pid).values())


def tree_cpu_each(pid: int) -> dict[int, float]:
    """utime + stime of ``pid`` and of each of its descendants, seconds."""

    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, out = [pid], {}
    while tree:
        p = tree.pop()
        try:
            out[p] = cpu_seconds(p)
        except OSError:
            continue
        tree += [child for child, parent in parents.items() if parent == p]
    return out


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections to local ``port`` held by each of ``pids`` (IPv4, from /proc/net/tcp)."""
    inodes = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    out = {}
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        out[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return out
