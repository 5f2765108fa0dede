"""zarr's IO thread, left idle when a command is interrupted.

zarr runs every store read and write on one background event loop. Its own exit hook gives that
thread 0.2 s, then fails to close the still-running loop and prints a traceback after
"dcpipe: interrupted". Nothing here imports zarr: a command that never opened a store pays
nothing for it.
"""
import asyncio
import sys


def finish_pending_writes(timeout_s: float = 60.0) -> None:
    """Let zarr's IO thread finish what an interrupted command left it writing.
    A chunk finished here belongs to a shard that was never committed: the rerun rewrites it.

    The loop is left running: a thread of ours (a read-ahead) may still submit a read, and one
    submitted to a stopped loop waits for ever, so the interpreter's exit, which joins that
    thread, would hang. zarr's exit hook stops the loop once every such thread is joined."""
    zarr_sync = sys.modules.get("zarr.core.sync")
    io_loop = zarr_sync and zarr_sync.loop[0]
    if io_loop is None or io_loop.is_closed():
        return

    async def others_done():
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others)

    try:
        asyncio.run_coroutine_threadsafe(others_done(), io_loop).result(timeout_s)
    except TimeoutError:
        pass  # a hung disk: leave the thread to zarr's hook rather than hang on Ctrl-C
