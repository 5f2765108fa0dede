"""Ctrl-C in the CLI: one that lands in a finaliser is delivered again, not lost, and a loader
worker that an interrupted command hangs up on stays quiet.

Python runs a SIGINT's handler in the main thread between bytecodes, wherever that thread is.
Inside a finaliser (a __del__, a generator the collector closes) the KeyboardInterrupt cannot
propagate: Python prints it as "Exception ignored" and the command goes on; a `dcpipe run`
then trained for ever. The hook below has a thread send it again a moment later, once the
finaliser has returned (sent from the hook itself, it would be handled inside the hook and be
ignored again); one that lands in a finaliser again is sent again.

A loader worker hands each batch's tensors to the main process as file descriptors, through
multiprocessing's resource sharer, a thread in the worker. A main process interrupted during a
handover hangs up on it, and that thread printed EOFError or ConnectionResetError after
"dcpipe: interrupted". Workers are forked from the CLI's process, so they inherit the hook.
"""
import _thread
import sys
import threading
import traceback

REDELIVER_AFTER_S = 0.05


def keep_lost_interrupts() -> None:
    """Make every KeyboardInterrupt raised inside a finaliser arrive again as a SIGINT."""
    if getattr(sys.unraisablehook, "keeps_interrupts", False):
        return
    previous = sys.unraisablehook

    def redeliver(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            resend = threading.Timer(REDELIVER_AFTER_S, _thread.interrupt_main)
            resend.daemon = True
            resend.start()
        else:
            previous(unraisable)

    redeliver.keeps_interrupts = True
    sys.unraisablehook = redeliver


def quiet_handover_hangups() -> None:
    """Print no traceback for a hang-up in multiprocessing's fd handover; any other as before."""
    if getattr(sys.excepthook, "quiet_hangups", False):
        return
    previous = sys.excepthook

    def print_unless_a_hangup(kind, exc, tb) -> None:
        in_sharer = any(frame.f_code.co_filename.endswith("resource_sharer.py")
                        for frame, _ in traceback.walk_tb(tb))
        if not (in_sharer and issubclass(kind, (EOFError, ConnectionError))):
            previous(kind, exc, tb)

    print_unless_a_hangup.quiet_hangups = True
    sys.excepthook = print_unless_a_hangup
