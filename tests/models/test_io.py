"""models.io: a failed Orbax restore leaves nothing running. Orbax runs a restore on a fresh
event loop (run_until_complete, then close) and the first failed read ends it while sibling
reads are still in flight; under draining_event_loops that loop finishes them (exceptions
retrieved) before it closes, so no completion lands on a closed loop and no abandoned
coroutine reports later."""

import asyncio
import gc
import sys
import threading
import time

import pytest

from latent_jax.models.io import draining_event_loops


def _orbax_like_restore(done: list):
    """As orbax asyncio_utils._run_sync_via_new_loop: gather two reads, one fails at once, the
    other completes 0.2 s later from another thread (as a tensorstore read) and then logs."""

    async def failing():
        raise OSError("truncated file")

    async def slow():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # the completion arrives on another thread, as tensorstore's
        threading.Thread(target=lambda: (time.sleep(0.2), loop.call_soon_threadsafe(fut.set_result, 1))).start()
        try:
            await fut
        finally:
            done.append("slow")

    async def main():
        await asyncio.gather(failing(), slow())

    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_failed_restore_loop_finishes_its_reads_before_closing():
    thread_errors, unraisable, done = [], [], []
    prev_t, prev_u = threading.excepthook, sys.unraisablehook
    threading.excepthook = lambda a: thread_errors.append(a.exc_value)
    sys.unraisablehook = lambda u: unraisable.append(u)
    try:
        with draining_event_loops():
            with pytest.raises(OSError, match="truncated"):
                _orbax_like_restore(done)
        assert done == ["slow"]  # the in-flight read finished before the loop closed
        time.sleep(0.4)
        gc.collect()
    finally:
        threading.excepthook, sys.unraisablehook = prev_t, prev_u
    assert thread_errors == [] and unraisable == []
    assert type(asyncio.get_event_loop_policy()) is asyncio.DefaultEventLoopPolicy  # put back


def test_without_draining_the_same_restore_leaves_noise():
    """The control: a plain loop closes under the in-flight read ('Event loop is closed' on the
    completing thread), which is what draining_event_loops prevents."""
    thread_errors, done = [], []
    prev_t = threading.excepthook
    threading.excepthook = lambda a: thread_errors.append(a.exc_value)
    try:
        with pytest.raises(OSError):
            _orbax_like_restore(done)
        time.sleep(0.4)
        gc.collect()
    finally:
        threading.excepthook = prev_t
    assert any("Event loop is closed" in str(e) for e in thread_errors)
