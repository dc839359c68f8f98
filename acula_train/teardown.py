"""The end of a run on every path (success, error, Ctrl-C): nothing it started may outlive it.

A gloo process group's worker threads stop only in the C++ destructor of the group, which runs when its last
reference goes, and the DDP wrapper of the model holds one: `torch.distributed.destroy_process_group()` alone drops
the world's reference and leaves the threads running while the wrapper lives. Left to interpreter exit, the wrapper
(kept by the frames of an exception's traceback on an error path) is freed by the finalising garbage collector,
under the GIL and in no set order, and the destructor then joins gloo threads that may need the GIL: a rank can sleep
there forever at the script's last line. So the run releases the wrapper, the frames that hold it and then the group,
while the interpreter is whole.
"""

from __future__ import annotations

import traceback

import torch


def release_traceback_frames(error: BaseException) -> None:
    """Drop the local variables of the finished frames of `error`'s traceback, and of the exceptions it chains to,
    so that the objects they hold (the DDP wrapper, a decoding generator and its thread pool) can go now rather than
    at interpreter exit. The traceback still prints (file, line and code are kept); a post-mortem debugger sees no
    locals in those frames. Frames still executing (the caller's) are left alone.

    Args:
        error (`BaseException`): the exception being propagated.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def destroy_process_group() -> bool:
    """Destroy the default process group if one is initialised (once: a second call finds none); returns whether one
    was destroyed. Release what holds the group (the DDP wrapper) first: its threads end with the last reference."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    torch.distributed.destroy_process_group()
    return True


__all__ = ["destroy_process_group", "release_traceback_frames"]
