"""How webdataset's indexed reader, wids (PyPI `wids` 0.1.x), reads an index and a shard,
transcribed from its source: wids/wids_specs.py (`resolve_dsdesc`, `urlmerge`, `urldir`),
wids/wids.py (`ShardListDataset.get_shard`, `group_by_key`, `splitname`) and
wids/wids_mmtar.py (`MMIndexedTar._build_index`, its default tar reader).

wids itself imports torch at module level, which the tests do not install; these functions
apply the same rules to our files, so an index that passes here opens in wids.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import numpy as np


def urldir(url: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(path=os.path.dirname(parsed.path)).geturl()


def urlmerge(base: str, url: str) -> str:
    parsed_base, parsed_url = urlparse(base), urlparse(url)
    if parsed_url.path.startswith("/"):
        path = parsed_url.path
    else:
        path = os.path.normpath(os.path.join(parsed_base.path, parsed_url.path))
    return urlunparse(
        (
            parsed_url.scheme or parsed_base.scheme,
            parsed_url.netloc or parsed_base.netloc,
            path,
            parsed_url.params,
            parsed_url.query,
            parsed_url.fragment,
        )
    )


def resolve(index_path: str) -> list[dict]:
    """ShardListDataset(index_path)'s shard list: its assertions, URLs rebased on the index's
    directory."""
    description = json.loads(Path(index_path).read_text())
    assert isinstance(description, dict)
    shardlist = description.get("shardlist", [])
    base = urldir(index_path)
    for shard in shardlist:
        shard["url"] = urlmerge(base, shard["url"])
    assert isinstance(shardlist, list)
    for shard in shardlist:
        assert isinstance(shard, dict) and "url" in shard and "nsamples" in shard
    assert description["wids_version"] == 1
    assert len(shardlist) > 0
    return shardlist


def get_shard(shardlist: list[dict], index: int) -> tuple[str, int]:
    """(url, index within the shard) of global sample `index`."""
    cum_lengths = np.cumsum([shard["nsamples"] for shard in shardlist])
    shard_idx = int(np.searchsorted(cum_lengths, index, side="right"))
    inner = index if shard_idx == 0 else index - int(cum_lengths[shard_idx - 1])
    return shardlist[shard_idx]["url"], inner


def splitname(name: str) -> tuple[str, str]:
    match = re.match(r"^((?:.*/)?.*?)(\..*)$", name)
    assert match, name
    return match[1], match[2]


def tar_names(path: Path) -> list[str]:
    """Member names as MMIndexedTar lists them: the ustar name field of regular-file headers,
    walking header to header by the size field."""
    data = path.read_bytes()
    names = []
    offset = 0
    while 0 <= offset < len(data):
        fields = struct.unpack(
            "!100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s", data[offset : offset + 500]
        )
        name = fields[0].decode("utf-8").strip("\x00")
        typeflag = fields[7].decode("utf-8").strip("\x00")
        if name and name != "././@PaxHeader" and typeflag in ("0", ""):
            names.append(name)
        size_text = fields[4].decode("utf-8").strip("\x00")
        if size_text == "":
            break
        offset += 512 + -(-int(size_text, 8) // 512) * 512
    return names


def nsamples(path: Path) -> int:
    """len(IndexedTarSamples(path)): adjacent names with one key are one sample."""
    groups = 0
    last_key = None
    for name in tar_names(path):
        if "." not in name:
            continue
        key, _ = splitname(name)
        if key != last_key:
            groups += 1
            last_key = key
    return groups
