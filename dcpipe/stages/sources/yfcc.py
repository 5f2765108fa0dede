"""One line of the YFCC100M metadata file -> (download url, metadata, reject reason).

The file is tab separated with no header. The current release has 25 fields; the older one has
23 (no line number, no photo hash). Text fields are URL-encoded ('+' for a space); tags are
comma-separated lists of URL-encoded tags. Marker 1 is a video: it becomes a reject `video`.
"""

from urllib.parse import unquote_plus

FIELDS_25 = (
    "line_number", "photo_id", "photo_hash", "user_nsid", "user_nickname", "date_taken",
    "date_uploaded", "capture_device", "title", "description", "user_tags", "machine_tags",
    "longitude", "latitude", "accuracy", "page_url", "download_url", "license_name",
    "license_url", "server_id", "farm_id", "secret", "secret_original", "extension_original",
    "marker",
)
FIELDS_23 = tuple(f for f in FIELDS_25 if f not in ("line_number", "photo_hash"))
_TEXT = ("user_nickname", "capture_device", "title", "description", "license_name")
_TAGS = ("user_tags", "machine_tags")
_NUMBERS = {"longitude": float, "latitude": float, "accuracy": int}


def _number(kind, text):
    try:
        return kind(text) if text else None
    except ValueError:
        return None


def _decode(fields: dict) -> dict:
    meta = dict(fields)
    for name in _TEXT:
        meta[name] = unquote_plus(meta[name])
    for name in _TAGS:
        meta[name] = [unquote_plus(t) for t in meta[name].split(",") if t]
    for name, kind in _NUMBERS.items():
        meta[name] = _number(kind, meta[name])
    return meta


def parse_yfcc_line(line: str):
    """(source or None, meta, reject reason or None) of one line, either release."""
    values = line.rstrip("\r\n").split("\t")
    names = {len(FIELDS_25): FIELDS_25, len(FIELDS_23): FIELDS_23}.get(len(values))
    if names is None:
        return None, {"fields": len(values)}, "bad_line"
    meta = _decode(dict(zip(names, values)))
    source = meta.pop("download_url") or None
    if meta["marker"].strip() == "1":
        return source, meta, "video"
    return source, meta, None if source else "missing_source"
