"""A user error raised in a DataLoader worker, handed to the main process intact.

A DataLoader re-raises a worker's exception as a new one whose message is the worker's whole
traceback. A DcpipeError (a damaged shard, say) travels instead as the worker's last item, and
the consumer raises it again: the CLI prints its message and exits 2, and the loader's other
workers are shut down as the loader is dropped.

Ctrl-C waits while a loader starts its workers and while it stops them. torch's loader iterator
starts them in its __init__ and stops them in its __del__: interrupted in the first, it left a
half-built object whose __del__ printed a traceback; interrupted in the second, the
KeyboardInterrupt was printed as "ignored" and lost, and `dcpipe run` trained on.
"""
from typing import Iterable, Iterator

from dcpipe.errors import DcpipeError
from dcpipe.shards.atomic import ctrl_c_deferred


def handed_on(items: Iterable) -> Iterator:
    """Worker side: the items, then the DcpipeError that stopped them, if one did."""
    try:
        yield from items
    except DcpipeError as exc:
        yield exc


def raised(items: Iterable) -> Iterator:
    """Consumer side: the items, raising a DcpipeError a worker handed on. Close it explicitly
    (`close()`) to stop a loader early: a Ctrl-C held back while it stops is then raised there,
    where one raised by a generator's finaliser would be lost."""
    with ctrl_c_deferred():
        source = iter(items)
    try:
        for item in source:
            if isinstance(item, DcpipeError):
                raise item
            yield item
    finally:
        with ctrl_c_deferred():
            del source  # the last reference: a loader's __del__ stops its workers here
