"""A user error raised in a DataLoader worker, handed to the main process intact.

A DataLoader re-raises a worker's exception as a new one whose message is the worker's whole
traceback. A DcpipeError (a damaged shard, say) travels instead as the worker's last item, and
the consumer raises it again: the CLI prints its message and exits 2, and the loader's other
workers are shut down as the loader is dropped.
"""
from typing import Iterable, Iterator

from dcpipe.errors import DcpipeError


def handed_on(items: Iterable) -> Iterator:
    """Worker side: the items, then the DcpipeError that stopped them, if one did."""
    try:
        yield from items
    except DcpipeError as exc:
        yield exc


def raised(items: Iterable) -> Iterator:
    """Consumer side: the items, raising a DcpipeError a worker handed on."""
    for item in items:
        if isinstance(item, DcpipeError):
            raise item
        yield item
