"""Exact de-duplication across a collection: the first occurrence in shard order wins.

The content hash is the sha256 of the *original* bytes (the `sha256` of each sample's JSON):
it is known before decoding, does not depend on `image_size` or JPEG settings, and "exact"
means byte-identical files. The hashes of written samples live in an SQLite table on disk
(`dedup.sqlite`, bounded memory at any N) as hash -> (shard, row) of the first occurrence.

Determinism: the main process decides duplicates shard by shard in index order, and a shard's
hashes are stored (replacing any left by a killed attempt at the same shard) *before* its tar is
published. The table answers for lower shards only; duplicates within a shard are found by the
caller in row order. So entries a killed attempt left for its own shard never count.
"""

import sqlite3
from pathlib import Path

DB_NAME = "dedup.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (hash BLOB PRIMARY KEY, shard INTEGER, row INTEGER)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_shard ON seen (shard);
"""


class DedupIndex:
    def __init__(self, shards_dir):
        self._db = sqlite3.connect(Path(shards_dir) / DB_NAME)
        self._db.executescript(_SCHEMA)

    def first_seen(self, sha256_hex: str) -> tuple[int, int] | None:
        found = self._db.execute("SELECT shard, row FROM seen WHERE hash = ?",
                                 (bytes.fromhex(sha256_hex),)).fetchone()
        return tuple(found) if found else None

    def in_earlier_shard(self, sha256_hex: str, shard: int) -> tuple[int, int] | None:
        """The (shard, row) of a lower shard holding the same content, if any."""
        found = self.first_seen(sha256_hex)
        return found if found is not None and found[0] < shard else None

    def record_shard(self, shard: int, hashes: list[tuple[str, int]]) -> None:
        """Make `hashes` [(sha256, row)] the shard's entries, atomically."""
        with self._db:
            self._db.execute("DELETE FROM seen WHERE shard = ?", (shard,))
            self._db.executemany(
                "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT(hash) DO UPDATE SET "
                "shard = excluded.shard, row = excluded.row "
                "WHERE (excluded.shard, excluded.row) < (seen.shard, seen.row)",
                [(bytes.fromhex(h), shard, row) for h, row in hashes])

    def close(self) -> None:
        self._db.close()
