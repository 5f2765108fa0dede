import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcpipe.stages.sources.folders import sync_listing
from dcpipe.stages.sources.tables import MAX_LINE_CHARS, SourceError, iter_rows

# A YFCC100M line of each release (tab separated). Fields as released: URL-encoded text,
# comma-separated tags, marker 0 = photo, 1 = video.
_YFCC_COMMON = [
    "6985418911", "39089491@N00", "gnuckx",
    "2012-02-16 09:56:37.0", "1331840483", "Canon+PowerShot+ELPH+310+HS",
    "IMG_0520", "My+caf%C3%A9+%26+tea", "canon,caf%C3%A9+noir,powershot", "",
    "-0.1278", "51.5074", "16", "http://www.flickr.com/photos/39089491@N00/6985418911/",
]
_YFCC_TAIL = ["Attribution-NonCommercial+License",
              "http://creativecommons.org/licenses/by-nc/2.0/",
              "7205", "8", "df7747990d", "692d7e0a7f", "jpg"]


def _yfcc25(url, marker):
    return "\t".join(["0", _YFCC_COMMON[0], "a7d27bd4c8ec51cbd0a5ea9d89e4bba"] + _YFCC_COMMON[1:]
                     + [url] + _YFCC_TAIL + [marker])


def _yfcc23(url, marker):
    return "\t".join(_YFCC_COMMON + [url] + _YFCC_TAIL + [marker])


def _rows(src, **kw):
    return list(iter_rows(src, **kw))


def test_csv_with_url_column_carries_other_columns(tmp_path):
    src = tmp_path / "list.csv"
    src.write_text("url,caption,width\nhttp://h/a.jpg,a cat,640\n,empty,1\nb.jpg,\"x, y\",2\n")
    rows = _rows(src)
    assert [(r.row, r.source, r.reject) for r in rows] == [
        (0, "http://h/a.jpg", None), (1, None, "missing_source"), (2, "b.jpg", None)]
    assert rows[0].meta == {"caption": "a cat", "width": "640"}
    assert _rows(src, meta_cols=["caption"])[2].meta == {"caption": "x, y"}


def test_tsv_with_named_columns(tmp_path):
    src = tmp_path / "list.tsv"
    src.write_text("img\tid\tnote\n/data/a.jpg\tk1\tn\n")
    [row] = _rows(src, url_col="img", key_col="id")
    assert (row.source, row.key, row.meta) == ("/data/a.jpg", "k1", {"note": "n"})


def test_jsonl_and_text_lists(tmp_path):
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"path": "a.jpg", "tags": ["x"]}\n\nnot json\n{"path": "b.jpg", "n": 2}\n')
    rows = _rows(jsonl)
    assert [(r.source, r.reject) for r in rows] == [("a.jpg", None), (None, "bad_line"),
                                                    ("b.jpg", None)]
    assert rows[0].meta == {"tags": ["x"]} and rows[2].meta == {"n": 2}
    text = tmp_path / "urls.txt"
    text.write_text("http://h/1.jpg\n\n  file:///x/2.jpg  \n")
    assert [(r.row, r.source) for r in _rows(text)] == [
        (0, "http://h/1.jpg"), (1, "file:///x/2.jpg")]


def test_parquet_is_read_in_batches(tmp_path, monkeypatch):
    import dcpipe.stages.sources.tables as sources

    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 3)
    src = tmp_path / "list.parquet"
    pq.write_table(pa.table({"url": [f"u{i}.jpg" for i in range(7)], "score": [0.5] * 6 + [None]}),
                   src, row_group_size=2)
    rows = _rows(src)
    assert [r.source for r in rows] == [f"u{i}.jpg" for i in range(7)]
    assert rows[6].meta == {"score": None} and [r.row for r in rows] == list(range(7))


def test_yfcc_both_releases_decode_text_and_reject_videos(tmp_path):
    src = tmp_path / "yfcc100m_dataset"
    lines = [_yfcc25("http://farm8/a.jpg", "0"), _yfcc23("http://farm8/b.jpg", "0"),
             _yfcc25("http://farm8/v.mp4", "1"), "too\tfew\tfields"]
    src.write_text("\n".join(lines) + "\n")
    rows = _rows(src)  # detected from the name
    assert rows == _rows(src, format="yfcc100m")
    assert [(r.source, r.reject) for r in rows] == [
        ("http://farm8/a.jpg", None), ("http://farm8/b.jpg", None),
        ("http://farm8/v.mp4", "video"), (None, "bad_line")]
    meta = rows[0].meta
    assert meta["description"] == "My café & tea"
    assert meta["capture_device"] == "Canon PowerShot ELPH 310 HS"
    assert meta["user_tags"] == ["canon", "café noir", "powershot"] and meta["machine_tags"] == []
    assert (meta["longitude"], meta["accuracy"], meta["photo_id"]) == (-0.1278, 16, "6985418911")
    assert "photo_hash" not in rows[1].meta and rows[1].meta["user_tags"] == meta["user_tags"]
    assert _rows(src, key_col="photo_id")[1].key == "6985418911"


def test_yfcc_file_read_as_tsv_gets_a_hint(tmp_path):
    src = tmp_path / "yfcc100m_dataset-0.tsv"
    src.write_text(_yfcc23("http://farm8/b.jpg", "0") + "\n")
    with pytest.raises(SourceError, match="pass --format yfcc100m"):
        _rows(src)
    assert _rows(src, format="yfcc100m")[0].source == "http://farm8/b.jpg"


def _listed(listing):
    return [json.loads(line) for line in listing.read_text().splitlines()]


def _class_folder(root, classes=4, per_class=50):
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i:04d}.jpg").write_bytes(b"x")


def test_folder_rows_keep_their_numbers_when_files_appear(tmp_path):
    root = tmp_path / "imgs"
    for rel in ("dog/b.jpg", "cat/a.jpg", "cat/c.jpg", ".hidden/x.jpg", "cat/.DS_Store"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    assert [(r.row, r.label) for r in _rows(root)] == [(0, "cat"), (1, "cat"), (2, "dog")]
    listing = tmp_path / "listing"
    assert sync_listing(root, listing) == 3
    first = _listed(listing)
    assert sorted(first) == ["cat/a.jpg", "cat/c.jpg", "dog/b.jpg"]
    (root / "cat" / "b.jpg").write_bytes(b"x")  # sorts between existing files
    with open(listing, "a") as f:
        f.write('"cat/tor')  # a line torn by a kill is cut, not read
    assert sync_listing(root, listing) == 1 and sync_listing(root, listing) == 0
    rows = _rows(root, listing=listing)
    assert [r.source.removeprefix(str(root) + "/") for r in rows] == first + ["cat/b.jpg"]
    assert [r.row for r in rows] == [0, 1, 2, 3]
    assert not listing.with_name("listing.new").exists()  # the scratch file is removed


def test_folder_listing_mixes_the_classes_in_a_fixed_order(tmp_path):
    """Sorted, every block of 20 rows would be one class: one-class shards."""
    root = tmp_path / "imgs"
    _class_folder(root)
    sync_listing(root, tmp_path / "a")
    listed = _listed(tmp_path / "a")
    assert sorted(listed) == [r.name for r in _rows(root)]
    blocks = [{rel.split("/")[0] for rel in listed[i:i + 20]} for i in range(0, 200, 20)]
    assert min(len(classes) for classes in blocks) >= 3
    copy = tmp_path / "copy"  # the same paths created in another order list the same way
    for rel in reversed(listed):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(b"y")
    sync_listing(copy, tmp_path / "b")
    assert _listed(tmp_path / "b") == listed


def test_folder_listing_killed_while_appending_continues_in_the_same_order(tmp_path):
    root = tmp_path / "imgs"
    _class_folder(root)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    sync_listing(root, whole)
    lines = whole.read_bytes().splitlines(keepends=True)
    killed.write_bytes(b"".join(lines[:70]) + lines[70][:5])  # 70 lines and a torn one
    killed.with_name("killed.new").write_bytes(b"left by the kill")
    assert sync_listing(root, killed) == 130
    assert killed.read_bytes() == whole.read_bytes()
    assert not killed.with_name("killed.new").exists()


def test_folder_listing_of_a_root_it_cannot_read_leaves_no_scratch_file(tmp_path):
    listing = tmp_path / "listing"
    with pytest.raises(OSError):
        sync_listing(tmp_path / "gone", listing)
    assert listing.read_bytes() == b"" and not listing.with_name("listing.new").exists()


@pytest.mark.parametrize("name,content,kw,message", [
    ("missing.csv", None, {}, "does not exist"),
    ("list.xyz", "a\n", {}, "cannot tell the format"),
    ("list.csv", "a\n", {"format": "bogus"}, "unknown format"),
    ("list.csv", "name,size\nx,1\n", {}, "no column named url or path"),
    ("list.csv", "url\nx\n", {"key_col": "id"}, "missing column(s) id"),
    ("list.jsonl", "[1, 2]\n", {}, "not a JSON object"),
    ("list.parquet", "not parquet", {}, "cannot read parquet"),
])
def test_unusable_source_lists_raise_clear_errors(tmp_path, name, content, kw, message):
    src = tmp_path / name
    if content is not None:
        src.write_text(content)
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _rows(src, **kw)


def test_damaged_gzip_list_stops_naming_file_and_line(tmp_path):
    src = tmp_path / "list.txt.gz"
    data = gzip.compress("".join(f"http://h/{i}.jpg\n" for i in range(5000)).encode())
    src.write_bytes(data[: len(data) // 2])  # cut mid-stream
    with pytest.raises(SourceError, match=r"list.txt.gz: unreadable after line \d+"):
        _rows(src)


def test_every_line_format_rejects_an_over_long_line_by_length(tmp_path):
    long = "x" * (MAX_LINE_CHARS + 10)
    cases = {"list.txt": f"a.jpg\n{long}\nb.jpg\n",
             "list.jsonl": f'{{"url": "a.jpg"}}\n{long}\n{{"url": "b.jpg"}}\n',
             "list.csv": f"url\na.jpg\n{long}\nb.jpg\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        rows = _rows(tmp_path / name)
        assert [(r.source, r.reject) for r in rows] == [
            ("a.jpg", None), (None, "line_too_long"), ("b.jpg", None)], name
        assert rows[1].detail.startswith(f"{MAX_LINE_CHARS + 10} characters"), name
