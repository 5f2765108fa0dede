"""The web of a crawl, on 127.0.0.1, in its own process: real photos behind many URLs and the
ways real URLs fail. Everything is served from memory (the photos are read once at start).

    python benchmarks/crawl_server.py --photos DIR --port P --stall-s 3

Routes (`<i>` picks photo i of the sorted folder, `<row>` only makes each URL distinct):
    /p/<i>/<row>.jpg    200, the photo (image/jpeg)
    /r/<i>/<row>.jpg    302 to /p/<i>/<row>.jpg (Flickr moves photos between hosts)
    /t/<i>/<row>.jpg    200, the first half of the photo (a download cut short upstream)
    /h/<row>.jpg        200, an HTML page ("this photo is no longer available")
    /x/<row>.jpg        200, text that is no image
    /e/<row>.jpg        500
    /s/<row>.jpg        nothing for `stall_s` seconds, then the connection closes (a timeout)
    anything else       404
Answers keep the connection open (HTTP/1.1 keep-alive) except the stalled ones. The process
prints `ready <port>` once it listens, and serves until SIGTERM.
"""

import argparse
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTML = (b"<!DOCTYPE html><html><head><title>Flickr</title></head><body>"
        b"<p>This photo is no longer available</p></body></html>")
TEXT = b"GIF89a? no: an error message served as an image\n" * 8


class CrawlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _photo(self, arg: str) -> bytes | None:
        photos = self.server.photos
        index = arg.split("/", 1)[0]
        return photos[int(index) % len(photos)] if index.isdigit() else None

    def do_GET(self):
        route, _, arg = self.path.lstrip("/").partition("/")
        if route in ("p", "t") and (data := self._photo(arg)) is not None:
            self._send(200, data if route == "p" else data[:len(data) // 2])
        elif route == "r":
            self._send(302, extra=[("Location", f"/p/{arg}")])
        elif route == "h":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif route == "x":
            self._send(200, TEXT, "text/plain")
        elif route == "e":
            self._send(500)
        elif route == "s":
            time.sleep(self.server.stall_s)
            self.close_connection = True
        else:
            self._send(404, ctype="text/plain")


class CrawlServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, photos: list[bytes], stall_s: float):
        super().__init__(("127.0.0.1", port), CrawlHandler)
        self.photos, self.stall_s = photos, stall_s

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)


def load_photos(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))]


def main():
    parser = argparse.ArgumentParser(description="a crawl's web on 127.0.0.1, from memory")
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stall-s", type=float, required=True)
    opts = parser.parse_args()
    httpd = CrawlServer(opts.port, load_photos(opts.photos), opts.stall_s)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ready {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
