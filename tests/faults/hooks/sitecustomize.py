"""Fault injection for the subprocesses of the tests in tests/faults/, kept out of the project's code.

Python imports `sitecustomize` at start-up from sys.path, so a test puts this folder on PYTHONPATH
and sets one of the variables below; without them this file does nothing.

  FAULT_KILL_IN_SAVE=N      the N-th torch.save of the process writes a few bytes, then the process
                            SIGKILLs itself: a kill -9 in the middle of writing a checkpoint.
  FAULT_KILL_RANK=R, FAULT_KILL_AT_STEP=N, FAULT_MARKER=PATH
                            the process with RANK=R SIGKILLs itself at its N-th DDP forward, once:
                            PATH is created first, and no process kills itself while it exists.
"""

import os
import signal

if os.environ.get("FAULT_KILL_IN_SAVE"):
    import torch

    _save, _calls = torch.save, [0]

    def _save_then_die(obj, f, *args, **kwargs):
        _calls[0] += 1
        if _calls[0] == int(os.environ["FAULT_KILL_IN_SAVE"]) and hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, f, *args, **kwargs)

    torch.save = _save_then_die

if os.environ.get("FAULT_KILL_AT_STEP") and os.environ.get("RANK") == os.environ.get("FAULT_KILL_RANK"):
    from torch.nn.parallel import DistributedDataParallel

    _forward, _steps = DistributedDataParallel.forward, [0]

    def _forward_then_die(self, *args, **kwargs):
        _steps[0] += 1
        marker = os.environ["FAULT_MARKER"]
        if _steps[0] == int(os.environ["FAULT_KILL_AT_STEP"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return _forward(self, *args, **kwargs)

    DistributedDataParallel.forward = _forward_then_die
