"""The git jail's starter: a small process, started once, whose children are every git process InkMCP runs.

Run by path (`python -I -S _gitjail_child.py FD LIMITS_JSON OOM_SCORE_ADJ`), never imported: it must not load
InkMCP (its memory is what every start borrows) and it needs nothing but the standard library. See `gitjail.py` for
why it exists. What it does:

- at start: sets its own resource limits (LIMITS_JSON: {"RLIMIT_DATA": n, ...}) and OOM score adjustment, which
  every child inherits at fork, dies with its parent (PR_SET_PDEATHSIG), ignores SIGXCPU for itself (its children
  get it back at default: the CPU limit is theirs, not the starter's accumulated time);
- reads requests from FD (a SOCK_SEQPACKET socket InkMCP holds the other end of): a JSON message
  {"argv": [...], "env": {...}} with three file descriptors (stdin, stdout, stderr) attached;
- starts each with posix_spawn (vfork-like: nothing of this process is copied), in a new session, signals at their
  defaults and unblocked, the three fds as 0/1/2 and no other fd (received fds are close-on-exec), and answers
  {"pid": n} or {"error": "...", "errno": n} in order;
- when a child exits (its pidfd becomes readable), reaps it and sends {"exit": pid, "status": waitstatus}.

The cgroup (memory, pids, CPU weight) is joined by InkMCP moving this process into it once, before its first
request: children are born in it, so no start pays a cgroup migration.
"""

import array
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 20
KEYCTL = {"x86_64": 250, "i686": 288, "aarch64": 219, "riscv64": 219, "loongarch64": 219, "ppc64le": 311,
          "s390x": 280}  # --- redteam5: keyctl's syscall number (asm-generic: 219)


def main() -> None:
    fd = int(sys.argv[1])
    limits = json.loads(sys.argv[2])
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # InkMCP died before the prctl took effect
        os._exit(0)
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    # --- redteam5: a session keyring of the starter's own, empty and with no permission for anyone (not even its
    # possessors: every git process, run as some tenant's uid, shares it), instead of InkMCP's, which every git
    # process possessed after setpriv: possessor rights on root's keys, whatever their owner (process.py step 4a)
    keyctl = KEYCTL.get(os.uname().machine)
    if keyctl is not None and libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(1), None) >= 0:  # JOIN, anonymous
        libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(5), ctypes.c_long(-3), ctypes.c_long(0))  # SETPERM @s 0
    # --- end
    try:  # the host OOM killer's choice before InkMCP's own processes, as every tenant process (process.py step 1b:
        # TENANT_OOM_SCORE_ADJ, passed as the third argument; git runs what a tenant's repository makes it do),
        # inherited by every git it starts
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(int(sys.argv[3])))
    except OSError:
        pass
    for name, value in limits.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        soft = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        # the CPU limit's hard value stays (this process's own CPU time grows with every start; it ignores the
        # soft limit's SIGXCPU, its children do not); the others are hard too, so no child can raise them
        resource.setrlimit(which, (soft, hard if name == "RLIMIT_CPU" else soft))
    os.umask(0o077)
    os.chdir("/")
    os.set_inheritable(fd, False)  # passed to this process inheritable; none of its children may hold it
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    defaults = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    data, fds = receive(sock)
                except OSError:
                    return
                if not data:
                    return  # InkMCP closed its end
                sock.send(json.dumps(start(data, fds, defaults, sel)).encode())
            else:
                pid, pidfd = key.data
                sel.unregister(key.fileobj)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                sock.send(json.dumps({"exit": pid, "status": status}).encode())


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request and its fds, received close-on-exec (socket.recv_fds drops its flags argument on 3.11): no
    child ever inherits another's pipes."""
    size = array.array("i").itemsize
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(3 * size), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % size)])
    return data, list(fds)


def start(data: bytes, fds: list[int], defaults: set[int], sel: selectors.BaseSelector) -> dict[str, object]:
    try:
        request = json.loads(data)
        if len(fds) != 3:
            return {"error": f"expected 3 file descriptors, got {len(fds)}"}
        actions = [(os.POSIX_SPAWN_DUP2, f, i) for i, f in enumerate(fds)]
        try:
            pid = os.posix_spawn(request["argv"][0], request["argv"], request["env"], file_actions=actions,
                                 setsid=True, setsigdef=defaults, setsigmask=())
        except OSError as e:
            return {"error": f"{request['argv'][0]}: {e.strerror}", "errno": e.errno}
        pidfd = os.pidfd_open(pid)
        sel.register(pidfd, selectors.EVENT_READ, (pid, pidfd))
        return {"pid": pid}
    finally:
        for f in fds:
            os.close(f)


if __name__ == "__main__":
    main()
