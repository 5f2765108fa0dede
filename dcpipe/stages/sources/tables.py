"""Input rows of the shard stage: any source list -> `Row(row, source, key, meta, reject)`.

Formats: an image folder (`root/<class>/<file>`), CSV, TSV, JSONL, Parquet, a plain-text list
(one source per line) and the YFCC100M metadata file (tab separated, no header, 25 or 23
fields). The format comes from the file name (a `.gz`/`.bz2` suffix is read through), a folder
is `folder` (or `webdataset` when `*.tar` files are at its top: a collection written by
another tool such as img2dataset, which the shard stage adopts whole instead of reading rows),
and `format=` overrides it. Rows are numbered from 0 in source order; blank lines
are not rows. A row that is unusable on its own (a YFCC video, an empty source cell, a broken
JSON line) carries a `reject` reason instead of being dropped, so that every row is accounted.

A row that would be unsafe to carry is a reject too: a line longer than `MAX_LINE_CHARS`
(`line_too_long`; read in pieces and never held whole, so one 300 MB line costs no memory), a
CSV record the csv module refuses (`bad_line`), a source longer than `MAX_SOURCE_CHARS`
(`source_too_long`) and text that is not valid UTF-8 (`bad_encoding`: the list is decoded with
surrogateescape, so one bad byte spoils only its row). Reject rows carry a short `detail`,
never the whole over-long text.

A source list that cannot be used at all (missing file, unknown format, missing column, a
file that cannot be read to its end) raises `SourceError`, naming the file (and the line).
"""

import bz2
import csv
import dataclasses
import functools
import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dcpipe.errors import DcpipeError
from dcpipe.shards.reader import tar_files
from dcpipe.stages.sources.folders import folder_files
from dcpipe.stages.sources.yfcc import FIELDS_23, FIELDS_25, parse_yfcc_line

FORMATS = ("folder", "csv", "tsv", "jsonl", "parquet", "text", "yfcc100m", "webdataset")
FOLDER_FORMATS = ("folder", "webdataset")
_EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".lst": "text", ".list": "text",
}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}
SOURCE_COLUMNS = ("url", "path")
LINE_FORMATS = ("text", "jsonl", "yfcc100m")  # one row per non-blank line
PARQUET_BATCH_ROWS = 4096
MAX_LINE_CHARS = 1 << 20  # a longer line (or CSV field) of a source list is a reject
MAX_SOURCE_CHARS = 1 << 16  # a longer source is a reject (URLs stay far below)
PREVIEW_CHARS = 80  # of an over-long line or source, in its reject record


class SourceError(DcpipeError, ValueError):
    """The source list as a whole cannot be used (the CLI exits 2 with this message)."""


@dataclass(frozen=True)
class Row:
    row: int
    source: str | None
    key: str | None = None
    meta: dict = field(default_factory=dict)
    reject: str | None = None
    label: str | None = None  # folder class, kept for evaluation only
    detail: str = ""  # why the row is a reject
    name: str | None = None  # a folder's file: its path inside the folder

    @property
    def recorded_source(self) -> str | None:
        """What samples, rejects and the plan record: a folder's file by its path inside the
        folder (the same wherever the command runs from; the folder is the shard's `source`),
        any other source as written."""
        return self.name if self.name is not None else self.source


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the source, the key and the metadata to carry."""

    url_col: str | None = None
    key_col: str | None = None
    meta_cols: tuple | None = None  # None: every other column


def detect_format(src, format=None) -> str:
    path = Path(src)
    if not path.exists():
        raise SourceError(f"source {src} does not exist")
    if format is not None:
        if format not in FORMATS:
            raise SourceError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    if path.is_dir():
        return "webdataset" if tar_files(path) else "folder"
    name = path.name.lower()
    suffixes = Path(name.removesuffix(".gz").removesuffix(".bz2")).suffixes
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    if "yfcc100m" in name:
        return "yfcc100m"
    raise SourceError(
        f"cannot tell the format of {src} from its name; pass --format (format= from "
        f"Python), one of {', '.join(FORMATS)}")


def open_text(src):
    """The source list as text, decompressing .gz / .bz2; a clear error if unreadable.
    Invalid UTF-8 bytes become lone surrogates, which make their row a `bad_encoding` reject."""
    path = Path(src)
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        return opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise SourceError(f"cannot read source list {src}: {exc.strerror or exc}") from exc


def _preview(text: str) -> str:
    return text[:PREVIEW_CHARS] + "..."


@dataclass(frozen=True)
class LongLine:
    """A line longer than MAX_LINE_CHARS: only its length and first characters are kept."""

    length: int
    start: str

    def row(self, i: int) -> Row:
        return Row(i, None, reject="line_too_long", detail=(
            f"{self.length} characters (limit {MAX_LINE_CHARS}), "
            f"starting {_preview(self.start)!r}"))


class Lines:
    """The lines of an open source list, each a str or, when too long, a `LongLine` (the rest
    of such a line is skipped piece by piece). `long` holds the last LongLine until taken.
    A file that cannot be read on (a damaged .gz) raises SourceError naming file and line."""

    def __init__(self, f, src):
        self.f, self.src, self.number, self.long = f, src, 0, None

    def __iter__(self):
        return self

    def __next__(self):
        try:
            line = self.f.readline(MAX_LINE_CHARS + 1)
            if len(line) > MAX_LINE_CHARS and line[-1] not in "\r\n":
                line = self.long = LongLine(len(line) + self._skip_rest(), line[:PREVIEW_CHARS])
        except (OSError, EOFError, zlib.error) as exc:
            raise SourceError(f"{self.src}: unreadable after line {self.number}: {exc}") from exc
        if not line:
            raise StopIteration
        self.number += 1
        return line

    def _skip_rest(self) -> int:
        skipped = 0
        while piece := self.f.readline(MAX_LINE_CHARS):
            skipped += len(piece.rstrip("\r\n"))
            if piece[-1] in "\r\n":
                break
        return skipped

    def take_long(self) -> LongLine | None:
        long, self.long = self.long, None
        return long


def jsonable(value):
    """A value as plain JSON types (Parquet timestamps, decimals, NaN ...)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _pick_columns(names, cols: Columns, src) -> tuple[str, str | None, list]:
    """The source column, key column and carried columns, checked against a table's header."""
    names = list(names)
    url_col = cols.url_col or next((c for c in SOURCE_COLUMNS if c in names), None)
    if url_col is None:
        hint = ("; is it the YFCC100M metadata file? pass --format yfcc100m"
                if len(names) in (len(FIELDS_23), len(FIELDS_25)) else "")
        raise SourceError(
            f"{src}: no column named {' or '.join(SOURCE_COLUMNS)}; name the source column "
            f"with --url-col (url_col= from Python) (columns: "
            f"{', '.join(map(str, names)) or 'none'}){hint}")
    wanted = [url_col] + ([cols.key_col] if cols.key_col else []) + list(cols.meta_cols or ())
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SourceError(f"{src}: missing column(s) {', '.join(missing)} named by --url-col, "
                          f"--key-col or --meta-cols "
                          f"(columns: {', '.join(map(str, names))})")
    if cols.meta_cols is not None:
        return url_col, cols.key_col, list(cols.meta_cols)
    return url_col, cols.key_col, [c for c in names if c not in (url_col, cols.key_col)]


def _row_from_record(i, record: dict, picked) -> Row:
    """`picked` = (url column, key column, carried columns or None for all other keys)."""
    url_col, key_col, meta_cols = picked
    source = record.get(url_col)
    source = str(source).strip() if source not in (None, "") else None
    key = record.get(key_col) if key_col else None
    if meta_cols is None:
        meta_cols = [c for c in record if c not in (url_col, key_col)]
    meta = {c: jsonable(record.get(c)) for c in meta_cols}
    return Row(i, source or None, None if key in (None, "") else str(key), meta,
               None if source else "missing_source")


def _iter_delimited(src, cols: Columns, delimiter: str) -> Iterator[Row]:
    """Like csv.DictReader (blank lines are not rows), but a record the csv module refuses or
    one holding an over-long line is that row's reject, and reading goes on."""
    csv.field_size_limit(MAX_LINE_CHARS)  # a quoted field may span lines: bound it too
    with open_text(src) as f:
        lines = Lines(f, src)
        reader = csv.reader((line if isinstance(line, str) else "\n" for line in lines),
                            delimiter=delimiter)
        try:
            header = next(reader, [])
        except csv.Error as exc:
            raise SourceError(f"{src}: line {reader.line_num}: not a readable table: {exc}") from exc
        if lines.take_long():
            raise SourceError(f"{src}: the header line is longer than {MAX_LINE_CHARS} characters")
        picked = _pick_columns(header, cols, src)
        for i, record in enumerate(_records(reader, lines)):
            yield (record(i) if callable(record)
                   else _row_from_record(i, dict(zip(header, record)), picked))


def _records(reader, lines: Lines):
    """The non-blank records of a csv reader: a list of values, or for a record the csv module
    refuses or that holds an over-long line, a function of the row number giving its reject."""
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            lines.take_long()
            yield functools.partial(Row, source=None, reject="bad_line",
                                    detail=f"line {reader.line_num}: {exc}")
            continue
        long = lines.take_long()
        if long is not None:
            yield long.row
        elif values:
            yield values


def _numbered_lines(src, start=0) -> Iterator[tuple[int, str | LongLine]]:
    """(row, line) of the non-blank lines from row `start` on; earlier lines are only counted."""
    with open_text(src) as f:
        i = 0
        for line in Lines(f, src):
            if not isinstance(line, str) or line.strip():
                if i >= start:
                    yield i, line
                i += 1


def _line_rows(src, start: int, parse) -> Iterator[Row]:
    """Rows of a line format: `parse(i, line)` of each line; an over-long line is a reject."""
    for i, line in _numbered_lines(src, start):
        yield parse(i, line) if isinstance(line, str) else line.row(i)


def _iter_jsonl(src, cols: Columns, start: int) -> Iterator[Row]:
    """Columns are checked against the first object; later objects may carry other keys."""
    picked = None

    def parse(i, line):
        nonlocal picked
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if picked is None:
            if not isinstance(record, dict):
                raise SourceError(f"{src}: line {i + 1}, the first, is not a JSON object")
            url_col, key_col, _ = _pick_columns(record.keys(), cols, src)
            picked = (url_col, key_col, cols.meta_cols)
        if isinstance(record, dict):
            return _row_from_record(i, record, picked)
        return Row(i, None, reject="bad_line", detail="not a JSON object")

    return _line_rows(src, start, parse)


def _iter_parquet(src, cols: Columns) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(src)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read parquet source list {src}: {exc}") from exc
    picked = _pick_columns(table.schema_arrow.names, cols, src)
    needed = list(dict.fromkeys(c for c in (picked[0], picked[1], *picked[2]) if c))
    i = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=needed):
        for record in batch.to_pylist():
            yield _row_from_record(i, record, picked)
            i += 1


def _iter_text(src, start: int) -> Iterator[Row]:
    return _line_rows(src, start, lambda i, line: Row(i, line.strip()))


def _iter_folder(root, listing) -> Iterator[Row]:
    for i, rel in enumerate(folder_files(root, listing)):
        label = rel.split("/", 1)[0] if "/" in rel else None
        if rel.endswith("/"):  # a sub-folder the walk could not list
            yield Row(i, os.path.join(root, rel), label=label, reject="unreadable_folder",
                      detail="could not be listed when walked; its files become new rows "
                             "once it is readable", name=rel)
        else:
            yield Row(i, os.path.join(root, rel), label=label, name=rel)


def _iter_yfcc(src, cols: Columns, start: int) -> Iterator[Row]:
    def parse(i, line):
        source, meta, reject = parse_yfcc_line(line)
        key = meta.get(cols.key_col) if cols.key_col else None
        return Row(i, source, None if key in (None, "") else str(key), meta, reject)

    return _line_rows(src, start, parse)


def _checked(row: Row) -> Row:
    """The row, or its reject when its source is too long or its text is not valid UTF-8."""
    if row.reject:
        return row
    if row.source is not None and len(row.source) > MAX_SOURCE_CHARS:
        return dataclasses.replace(row, source=_preview(row.source), reject="source_too_long",
                                   detail=f"{len(row.source)} characters "
                                          f"(limit {MAX_SOURCE_CHARS})")
    try:
        json.dumps([row.source, row.key, row.meta], ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        return dataclasses.replace(row, reject="bad_encoding",
                                   detail=f"not valid UTF-8 (or a lone surrogate): {exc.reason}")
    return row


def iter_rows(src, format=None, url_col=None, key_col=None, meta_cols=None,
              listing=None, start=0) -> Iterator[Row]:
    """Rows of `src` in source order. Errors about the source as a whole are raised at once.

    `listing`: for a folder, the file that fixes its row order (see `folders.sync_listing`);
    without one the folder is read in sorted order. `start`: rows before it may be left out
    (line formats skip them without parsing; others still yield them).
    """
    fmt, rows = _read(src, format, url_col, key_col, meta_cols, listing, start)
    if fmt != "folder":  # a folder's undecodable file names are real files
        rows = map(_checked, rows)
    return _started(rows)


def _read(src, format, url_col, key_col, meta_cols, listing, start) -> tuple[str, Iterator[Row]]:
    """(format, rows as the format's reader gives them, not yet started)."""
    fmt = detect_format(src, format)
    if (fmt in FOLDER_FORMATS) != Path(src).is_dir():
        raise SourceError(f"{src}: format {fmt} needs a {'folder' if fmt in FOLDER_FORMATS else 'file'}")
    if fmt == "webdataset":
        raise SourceError(f"{src} is a WebDataset collection: its tars are adopted whole "
                          "(`dcpipe shard --src` does), not read as rows")
    cols = Columns(url_col, key_col, tuple(meta_cols) if meta_cols is not None else None)
    readers = {
        "folder": lambda: _iter_folder(src, listing),
        "csv": lambda: _iter_delimited(src, cols, ","),
        "tsv": lambda: _iter_delimited(src, cols, "\t"),
        "jsonl": lambda: _iter_jsonl(src, cols, start),
        "parquet": lambda: _iter_parquet(src, cols),
        "text": lambda: _iter_text(src, start),
        "yfcc100m": lambda: _iter_yfcc(src, cols, start),
    }
    return fmt, readers[fmt]()


def _started(rows: Iterator[Row]) -> Iterator[Row]:
    """`rows` with its first row read now, so that header and column errors raise now."""
    first = next(rows, None)
    return _chain_first(first, rows)


def _chain_first(first, rows):
    if first is not None:
        yield first
        yield from rows


def row_texts(src, format=None, url_col=None, key_col=None, meta_cols=None,
              listing=None) -> Iterator[str]:
    """One text per row, in row order, after the checks of the source as a whole: a line
    format's raw line (unparsed, so a pass over YFCC100M stays cheap), any other format's
    values as read (not dcpipe's verdicts on them, which may change between versions).
    The shard plan counts and fingerprints these."""
    fmt, rows = _read(src, format, url_col, key_col, meta_cols, listing, 0)
    rows = _started(rows)
    if fmt in LINE_FORMATS:
        rows.close()
        return (line if isinstance(line, str) else repr(line) for _, line in _numbered_lines(src))
    return (repr((r.recorded_source, r.key, r.meta, r.label)) for r in rows)


def source_id(src) -> str:
    """The identity of a source in the plan: its resolved absolute path."""
    return str(Path(os.path.abspath(src)).resolve())
