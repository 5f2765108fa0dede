"""A Ctrl-C that lands in a finaliser is delivered again, not lost.

Python runs a SIGINT's handler in the main thread between bytecodes, wherever that thread is.
Inside a finaliser (a __del__, a generator the collector closes) the KeyboardInterrupt cannot
propagate: Python prints it as "Exception ignored" and the command goes on; a `dcpipe run`
then trained for ever. The hook below has a thread send it again a moment later, once the
finaliser has returned (sent from the hook itself, it would be handled inside the hook and be
ignored again); one that lands in a finaliser again is sent again.
"""
import _thread
import sys
import threading

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
