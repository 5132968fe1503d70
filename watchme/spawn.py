"""Child processes for `watchme deploy`'s first milliseconds: ssh and git, without subprocess.

The memo check's ssh connection is most of a no-op deploy, and every millisecond before it
starts is added to it, over a 100 ms link too. Importing subprocess costs ~10 ms there
(locale, signal, threading, selectors, contextlib, warnings), more than git's two answers
take; os.posix_spawnp is in the interpreter already. This is the little of Popen the fast
path needs: pipes, one text input, the outputs read together, a timeout, kill.

Everything after the ssh command has started may import what it likes.
"""

from __future__ import annotations

import os


class Proc:
    """One child process: its pid and the parent's ends of its pipes."""

    def __init__(self, argv: list[str], stdin: bool = False, stderr: bool = True,
                 env: dict | None = None):
        ends, actions = {}, []
        # (stdin: the child reads; stdout/stderr: the child writes)
        wanted = [(0, stdin), (1, True), (2, stderr)]
        try:
            for fd, pipe in wanted:
                if pipe:
                    r, w = os.pipe()
                    child, mine = (r, w) if fd == 0 else (w, r)
                    ends[fd] = (child, mine)
                    actions += [(os.POSIX_SPAWN_DUP2, child, fd), (os.POSIX_SPAWN_CLOSE, mine)]
                else:
                    actions.append((os.POSIX_SPAWN_OPEN, fd, os.devnull,
                                    os.O_RDONLY if fd == 0 else os.O_WRONLY, 0))
            self.pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env,
                                       file_actions=actions)
        except OSError:
            for child, mine in ends.values():
                os.close(child)
                os.close(mine)
            raise
        for child, _ in ends.values():
            os.close(child)  # (os.pipe's ends are close-on-exec: no later child keeps ours)
        self.stdin = ends[0][1] if 0 in ends else None
        self.stdout = ends[1][1]
        self.stderr = ends[2][1] if 2 in ends else None
        self.returncode: int | None = None

    def communicate(self, text: str = "", timeout: float | None = None) -> tuple[str, str]:
        """Write text to stdin (then close it), read stdout and stderr to their ends, wait.
        TimeoutError when the child has not finished in time (it is killed then)."""
        import select  # (a C module: selectors would import math, collections.abc and more)
        import time

        data = text.encode()
        stdout, stderr = self.stdout, self.stderr
        out: dict[int, list[bytes]] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        poll, open_fds = select.poll(), set()
        if self.stdin is not None:
            if data:
                poll.register(self.stdin, select.POLLOUT)
                open_fds.add(self.stdin)
            else:
                os.close(self.stdin)
                self.stdin = None
        for fd in (stdout, stderr):
            if fd is not None:
                out[fd] = []
                poll.register(fd, select.POLLIN)
                open_fds.add(fd)
        while open_fds:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.kill()
                raise TimeoutError(f"no answer in {timeout} s")
            for fd, event in poll.poll(None if left is None else max(1, int(left * 1000))):
                if fd == self.stdin:
                    try:  # (the reader gone: the rest is not wanted)
                        gone = event & (select.POLLERR | select.POLLHUP)
                        # (PIPE_BUF at a time: POLLOUT promises that much, no more)
                        data = b"" if gone else data[os.write(fd, data[:select.PIPE_BUF]):]
                    except BrokenPipeError:
                        data = b""
                    if not data:
                        poll.unregister(fd)
                        open_fds.discard(fd)
                        os.close(fd)
                        self.stdin = None
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    out[fd].append(chunk)
                else:
                    poll.unregister(fd)
                    open_fds.discard(fd)
        self.wait()
        return (b"".join(out.get(stdout, [])).decode(errors="replace"),
                b"".join(out.get(stderr, [])).decode(errors="replace"))

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        self._close()
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            self.wait()

    def _close(self) -> None:
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
