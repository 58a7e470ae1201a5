"""
Stopping a run on a signal: SIGTERM (what a scheduler sends before it preempts a node) or SIGINT
(Ctrl-C) ends the run after the step in progress, with a checkpoint, on every rank together.

    stop = StopSignals()            # in train(): handlers installed (main thread only)
    ... a step ...
    stopped = stop.agreed(device)   # after each step: signal.SIGTERM if any rank got one, else None
    stop.close()                    # the previous handlers back

A signal reaches one process (the scheduler may signal one rank, or torchrun forwards it to its
workers at slightly different times). The handler only sets a flag; after each step the ranks
all-reduce it (MAX: one collective of one number per step), so all of them stop after the SAME
step and write the same checkpoint. A second Ctrl-C stops at once (KeyboardInterrupt).
"""

import signal
import threading

import torch.distributed as dist

from parallel import all_sum


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received, self.previous = 0, {}
        if threading.current_thread() is threading.main_thread():   # Python handles signals there only
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt          # Ctrl-C twice: the user does not want to wait
        self.received = signum
        print(f"{signal.Signals(signum).name} received: stopping after this step, with a checkpoint", flush=True)

    def agreed(self, device):
        """The signal (signal.SIGTERM, ...) if any rank received one, else None: the same answer on
        every rank."""
        received = self.received
        if dist.is_initialized():
            received = int(all_sum([received], device, op=dist.ReduceOp.MAX)[0])
        return signal.Signals(received) if received else None

    def close(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}
