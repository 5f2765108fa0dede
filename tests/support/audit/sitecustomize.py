"""Put on PYTHONPATH by support.torchrun: logs where this rank renames files to (an audit hook
sees every os.rename/os.replace, which is how every atomic write of dcpipe ends)."""
import os
import sys

_LOG = os.environ.get("DCPIPE_TEST_RENAMES")

if _LOG:
    _path = f"{_LOG}.{os.environ.get('RANK', 'none')}"

    def _log_rename(event, args):
        if event == "os.rename":
            with open(_path, "a") as f:
                f.write(f"{os.fspath(args[1])}\n")

    sys.addaudithook(_log_rename)
