"""A committed shard of tiny black JPEGs with one reject: enough for workspace and CLI tests."""
import io

from PIL import Image

from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.writer import ShardWriter


def add_shard(shards_dir, index, n=2):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG")
    writer = ShardWriter(shards_dir, index)
    for row in range(n):
        writer.add(make_key(index, row), buf.getvalue(), {})
    summary = {"rows": n + 1, "rejects": {"http_404": 1}}
    add_entry(shards_dir, writer.commit(summary, [{"row": n, "reason": "http_404"}], summary))
