"""Recipes given as URLs: read with the storage options (headers), bounded in size, and a
refused or failed request said as such, never as "does not exist"."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import FileServer
from storage_helpers import shardflow

from helpers import good_shard

TOKEN = {"Authorization": "Bearer recipe-t0ken"}
RECIPE = "ops: [{image: {}}, {encode: {members: {png: image}}}]\n"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "recipe.yaml").write_text(RECIPE)
    return root


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return good_shard(tmp_path / "in.tar", count=2)


def one_error_line(result, code: int, *words: str) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_recipe_url_is_read_with_the_storage_options(
    site: Path, shard: Path, tmp_path: Path
) -> None:
    option = "http=" + json.dumps({"headers": TOKEN})
    with FileServer(site, required_headers=TOKEN) as web:
        url = f"{web.url}/recipe.yaml"
        refused = shardflow("augment", shard, tmp_path / "a.tar", "--recipe", url)
        by_flag = shardflow(
            "augment", shard, tmp_path / "b.tar", "--recipe", url, "--storage-option", option
        )
        # The plan pod gets the secret's options from its environment, as augment does.
        planned = shardflow(
            "plan", shard, tmp_path / "c.tar", "--recipe", url,
            env={"SHARDFLOW_STORAGE_OPTIONS_SECRET": json.dumps({"http": {"headers": TOKEN}})},
        )  # fmt: skip
    one_error_line(refused, 2, "access refused", "401", "--storage-option")
    assert "does not exist" not in refused.stderr
    assert not (tmp_path / "a.tar").exists()
    assert by_flag.returncode == 0, by_flag.stderr
    assert (tmp_path / "b.tar").is_file()
    assert planned.returncode == 0, planned.stderr


def test_a_missing_recipe_url_and_an_unreachable_server_are_told_apart(
    site: Path, shard: Path, tmp_path: Path
) -> None:
    with FileServer(site) as web:
        signed = shardflow("recipe", f"{web.url}/recipe.yaml?sig=SECRET")
        missing = shardflow("recipe", f"{web.url}/missing.yaml?sig=SECRET")
    with socket.socket() as closed:  # a port with nothing listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = shardflow(
        "augment", shard, tmp_path / "out.tar", "--recipe", f"http://127.0.0.1:{port}/r.yaml"
    )
    assert signed.returncode == 0, signed.stderr  # a signed URL: the path says it is YAML
    assert "name: recipe\n" in signed.stdout
    one_error_line(missing, 2, "does not exist", "?sig=REDACTED")
    assert "SECRET" not in missing.stderr
    line = one_error_line(unreachable, 1, "cannot be read")  # a retry may mend it
    assert "does not exist" not in line
    assert not (tmp_path / "out.tar").exists()


class _Endless(BaseHTTPRequestHandler):
    """Answers every GET with a YAML comment that never ends (no length, no end)."""

    sent: int = 0

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"#" + b"x" * 65535
        try:
            self.wfile.write(b"ops: []\n")
            while type(self).sent < 1 << 30:  # stops at 1 GiB should the client never stop
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass


@pytest.fixture
def endless() -> Iterator[tuple[str, type[_Endless]]]:
    handler = type("Endless", (_Endless,), {"sent": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/recipe.yaml", handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_endless_recipe_url_is_cut_at_the_size_limit(endless, tmp_path: Path) -> None:
    url, handler = endless
    result = shardflow("recipe", url, timeout=60)
    one_error_line(result, 2, "larger than")
    assert handler.sent < 64 << 20  # the client stopped reading; the server wrote no more


def test_a_large_recipe_streamed_without_a_length_is_read_whole(tmp_path: Path) -> None:
    """A network read returns what has arrived: the recipe is read to its end, never cut at a
    chunk (a cut recipe could parse as another recipe)."""
    root = tmp_path / "site"
    root.mkdir()
    comment = "# " + "x" * 200_000 + "\n"
    (root / "big.yaml").write_text(comment + "name: big\n" + RECIPE)
    with FileServer(root, sized=False) as web:
        result = shardflow("recipe", f"{web.url}/big.yaml")
    assert result.returncode == 0, result.stderr
    assert "name: big\n" in result.stdout
