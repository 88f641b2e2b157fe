"""`ClusterWatchdog`: bounds the wait for a multi-worker cluster, and lets Ctrl-C end it.

TensorFlow waits for the other workers inside one C++ call that holds the GIL and catches
SIGTERM itself, so nothing in the waiting process can act. While the watchdog is active, a
process of its own (this file run as an isolated script, standard library only, so it starts
at once)
waits instead: Ctrl-C (SIGINT to the process group), SIGTERM to the process group and the
timeout reach it, and it prints one line and kills the waiting process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys


class ClusterWatchdog:
    """While active (a context manager), ends this process if the cluster is not up within
    `timeout` seconds, or on Ctrl-C or a SIGTERM to the process group."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> ClusterWatchdog:
        self._process = subprocess.Popen([sys.executable, "-I", __file__, str(os.getpid()), str(self.timeout)],
                                         stdin=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        assert process is not None and process.stdin is not None  # __enter__ started it
        process.stdin.close()  # end of input: the watchdog exits
        process.wait()


def _watch(pid: int, timeout: float) -> None:
    """The watchdog process: kills `pid` on a signal or after `timeout` seconds, unless its
    standard input ends first (the cluster came up)."""

    def stop(line: str) -> None:
        print("charrnn: " + line, file=sys.stderr, flush=True)
        os.kill(pid, signal.SIGKILL)
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop(
            f"stopped by {signal.Signals(signum).name} while waiting for the other workers; nothing was trained; "
            "run the same command again on every worker"))
    if not select.select([sys.stdin], [], [], timeout)[0]:
        stop(f"error: not every worker of TF_CONFIG came up within {timeout:g} s (--cluster_timeout); start every "
             "worker with the same TF_CONFIG, then run the same command again")


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]))
