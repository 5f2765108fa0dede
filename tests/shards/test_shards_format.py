import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import webdataset as wds
from PIL import Image

from dcpipe.shards.manifest import add_entry, load_manifest
from dcpipe.shards.naming import MAX_KEY_LEN, make_key, sanitize_key, shard_name
from dcpipe.shards.reader import (ShardCorrupt, ShardReadError, count_samples, iter_shard,
                                  list_shards, missing_or_short, verify_shard)
from dcpipe.shards.writer import ShardWriter
from support.damage import cut, flip_in_member


def _jpeg(colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "JPEG")
    return buf.getvalue()


def _write(shards_dir, index, n):
    writer = ShardWriter(shards_dir, index)
    for row in range(n):
        writer.add(make_key(index, row), _jpeg((row, 0, 0)), {"row": row})
    entry = writer.commit({"rows": n}, [{"row": n, "reason": "http_404"}], {"row_start": 0})
    add_entry(shards_dir, entry)
    return entry


def test_names_are_fixed_width_and_keys_dot_free():
    assert shard_name(12) == "000012"
    assert make_key(3, 45) == "000003000045"
    assert sanitize_key("../../etc/passwd.jpg") == "______etc_passwd_jpg"
    with pytest.raises(ValueError):
        sanitize_key("../..")


def test_written_shard_reads_back_in_order_with_checksum(tmp_path):
    entry = _write(tmp_path, 0, 4)
    tar_bytes = (tmp_path / "000000.tar").read_bytes()
    assert entry["sha256"] == hashlib.sha256(tar_bytes).hexdigest()
    assert entry["bytes"] == len(tar_bytes)
    samples = list(iter_shard(tmp_path / "000000.tar"))
    assert [s.meta["row"] for s in samples] == [0, 1, 2, 3]
    assert all(s.error is None and s.image.startswith(b"\xff\xd8") for s in samples)
    assert (tmp_path / "000000.rejects.jsonl").read_text().count("http_404") == 1
    [info] = list_shards(tmp_path)
    assert (info.name, info.n_samples) == ("000000", 4)


def test_same_samples_give_byte_identical_tars(tmp_path):
    a, b = _write(tmp_path / "a", 0, 3), _write(tmp_path / "b", 0, 3)
    assert a["sha256"] == b["sha256"]


def test_keys_too_long_for_ustar_names_are_written_and_read_by_every_reader(tmp_path):
    keys = ["k" * n for n in (96, 100, MAX_KEY_LEN)]  # USTAR names stop at 100 bytes
    writer = ShardWriter(tmp_path, 0)
    for key in keys:
        writer.add(key, _jpeg(), {"key": key})
    writer.commit({}, [])
    tar = tmp_path / "000000.tar"
    assert [s.key for s in iter_shard(tar)] == keys
    assert [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)] == keys
    names = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True, check=True)
    assert names.stdout.split() == [f"{k}.{e}" for k in keys for e in ("jpg", "json")]


def test_metadata_with_undecodable_file_name_bytes_is_valid_json(tmp_path):
    writer = ShardWriter(tmp_path, 0)
    writer.add("k", _jpeg(), {"source": "/photos/caf\udce9.jpg"})  # b"caf\xe9" decoded by os
    writer.commit({}, [])
    with tarfile.open(tmp_path / "000000.tar") as tar:
        raw = tar.extractfile("k.json").read()
    assert json.loads(raw.decode("utf-8")) == {"source": "/photos/caf\udce9.jpg"}


def test_uncommitted_writer_leaves_no_shard(tmp_path):
    writer = ShardWriter(tmp_path, 5)
    writer.add(make_key(5, 0), _jpeg(), {})
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_and_duplicate_keys(tmp_path):
    writer = ShardWriter(tmp_path, 0)
    with pytest.raises(ValueError):
        writer.add("a.b", _jpeg(), {})
    writer.add("a", _jpeg(), {})
    with pytest.raises(ValueError):
        writer.add("a", _jpeg(), {})
    writer.abort()


def test_manifest_replaces_entries_by_index(tmp_path):
    _write(tmp_path, 1, 2)
    _write(tmp_path, 0, 1)
    _write(tmp_path, 1, 3)
    assert [(e["index"], e["n_samples"]) for e in load_manifest(tmp_path)["shards"]] == [(0, 1), (1, 3)]


def test_foreign_shards_are_a_collection(tmp_path):
    # img2dataset-style: 5-digit names, no manifest, a stats file beside each tar
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for key in ("000000000", "000000001"):
            for ext, data in (("jpg", _jpeg()), ("txt", b"caption"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    [info] = list_shards(tmp_path)
    assert (info.name, info.n_samples) == ("00000", 2)
    assert [s.key for s in iter_shard(info.path)] == ["000000000", "000000001"]


def test_truncated_tar_raises_after_the_readable_samples(tmp_path):
    _write(tmp_path, 0, 6)
    path = tmp_path / "000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    read = []
    with pytest.raises(ShardReadError):
        for sample in iter_shard(path):
            read.append(sample.key)
    assert 0 < len(read) < 6
    with pytest.raises(ShardReadError):
        count_samples(tmp_path / "missing.tar")


def test_member_without_image_is_an_error_sample(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        info = tarfile.TarInfo("k1.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    [sample] = list(iter_shard(tmp_path / "x.tar"))
    assert sample.image is None and sample.error == "no image member"


def test_manifest_append_cut_by_a_kill_is_skipped_then_repaired(tmp_path):
    _write(tmp_path, 0, 1)
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"index": 1, "name": "0000')  # what a kill mid-append leaves
    assert [e["index"] for e in load_manifest(tmp_path)["shards"]] == [0]
    _write(tmp_path, 2, 1)
    assert [e["index"] for e in load_manifest(tmp_path)["shards"]] == [0, 2]


# ---------------------------------------------------------------- verification against the manifest
def _read_all(shard):
    return [s.key for s in iter_shard(shard.path, shard.sha256)]


def test_a_shard_of_ours_is_verified_as_it_is_read(tmp_path):
    _write(tmp_path, 0, 3)
    [shard] = list_shards(tmp_path)
    assert shard.sha256 and shard.bytes == shard.path.stat().st_size
    assert _read_all(shard) == [make_key(0, r) for r in range(3)]
    assert verify_shard(shard) is None


def test_a_flipped_byte_in_a_jpeg_member_stops_the_read_naming_the_shard(tmp_path):
    _write(tmp_path, 0, 3)
    [shard] = list_shards(tmp_path)
    flip_in_member(shard.path, nth=1)
    samples = iter_shard(shard.path, shard.sha256)
    assert [next(samples).key for _ in range(2)] == [make_key(0, 0), make_key(0, 1)]
    with pytest.raises(ShardCorrupt, match="000000.tar.*sha256"):  # before the last sample
        next(samples)
    assert "sha256 differs" in verify_shard(shard)
    assert len(list(iter_shard(shard.path))) == 3  # without a digest: read as it is


@pytest.mark.parametrize("damage", ["cut", "delete"])
def test_a_short_or_missing_shard_of_ours_is_an_error_not_lost_rows(tmp_path, damage):
    _write(tmp_path, 0, 3)
    [shard] = list_shards(tmp_path)
    cut(shard.path, 0.6) if damage == "cut" else shard.path.unlink()
    with pytest.raises(ShardCorrupt, match="000000.tar"):
        _read_all(shard)
    assert missing_or_short([shard]) == [verify_shard(shard)]
    assert ("missing" if damage == "delete" else "bytes, its manifest entry") in verify_shard(shard)
