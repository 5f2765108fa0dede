"""A progress bar with rate and failure counts (tqdm), silent in quiet mode (cron)."""

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, enabled: bool = True):
        self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, disable=not enabled,
                         desc="shard", smoothing=0.1)

    def update(self, rows: int, written: int, rejected: int) -> None:
        self._bar.set_postfix(written=written, rejected=rejected, refresh=False)
        self._bar.update(rows)

    def close(self) -> None:
        self._bar.close()
