"""Seeded mutations of valid shards and manifests, for the fuzz tests.

Each case is reproducible from (seed, case number) alone: `Case.describe()` names the base
shard and the mutations applied, so a failure found in a long run can be replayed.

Byte mutations work on the archive as stored: truncations (anywhere, on a block, at a member
boundary, before the end-of-archive blocks), byte flips in headers (with or without a fixed
checksum, so that damage past the checksum reaches the parser) and in payloads, header fields
rewritten (size, type, name, link), garbage inserted or appended. Structural mutations rebuild
the archive with members inserted, renamed, deleted, duplicated or reordered.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

from helpers import image_bytes

BLOCK = 512
CONTROLS = 0.05  # share of cases left untouched: they must pass, proving the set-up sound
TRICKY_NAMES = [
    "../escape.jpg",
    "/etc/absolute.json",
    "C:/drive.jpg",
    "dir/../../up.json",
    "0000000000000000.jpg",  # the first sample's key again, further on
    "noextension",
    ".hidden",
    "key.",
    "a" * 120 + ".jpg",  # a GNU long name
    "nested/dir/key.json",
    "bad\x01control.jpg",
    "sample.pyd",
    "sample.pth",
    "sample.JPG",
    "sample.seg.png",
    "unicodé-kéy.json",
    "sample.json/",
]
TYPES = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    b"Z",
]
PAX_RECORDS = [
    {"size": "abc"},
    {"size": "-5"},
    {"size": "99999999999999999999999"},
    {"path": "../pax-escape.jpg"},
    {"path": "p" * 300 + ".json"},
    {"mtime": "not-a-time"},
    {"uid": "-1"},
    {"linkpath": "/etc/passwd"},
    {"hdrcharset": "BINARY", "path": "bin\udcff.jpg"},
]
Member = tuple[tarfile.TarInfo, bytes]


def _tar(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "../../etc/passwd"
    return info, data


def _sample(key: str, index: int, image: str = "jpg") -> list[Member]:
    fmt = {"jpg": "JPEG", "png": "PNG"}[image]
    return [
        _member(f"{key}.{image}", image_bytes(32, 24, fmt, seed=index)),
        _member(f"{key}.json", json.dumps({"cls": index % 3}).encode()),
    ]


def base_members() -> list[list[Member]]:
    """The valid shards every case starts from: plain, PNG and extra members, long names."""
    plain = [m for i in range(3) for m in _sample(f"{i:016x}", i)]
    mixed = [m for i in range(3) for m in _sample(f"{i:016x}", i, ("jpg", "png")[i % 2])]
    mixed.insert(2, _member(f"{0:016x}.txt", b"a caption"))
    long_names = [m for i in range(2) for m in _sample("d" * 110 + f"/{i:04d}", i)]
    return [plain, mixed, long_names]


def base_shards() -> list[bytes]:
    shards = [_tar(members) for members in base_members()]
    shards.append(_tar(base_members()[0], tarfile.PAX_FORMAT))
    return shards


def _headers(data: bytes) -> list[tuple[int, int, int]]:
    """(header offset, data offset, size) of each member tarfile can still find."""
    found = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                found.append((info.offset_data - BLOCK, info.offset_data, info.size))
    except Exception:  # tarfile on damaged bytes raises all sorts; what was found is enough
        pass
    return found


def _fix_checksum(data: bytearray, header: int) -> None:
    block = data[header : header + BLOCK]
    block[148:156] = b" " * 8
    checksum = sum(block)
    data[header + 148 : header + 156] = b"%06o\0 " % (checksum & 0o777777)


def _a_header(data: bytes, rng: random.Random) -> int | None:
    headers = _headers(data)
    if headers:
        return rng.choice(headers)[0]
    blocks = len(data) // BLOCK
    return rng.randrange(blocks) * BLOCK if blocks else None


# --- byte mutations ------------------------------------------------------------------------


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return data, "truncate (empty)"
    headers = _headers(data)
    choices = {
        "anywhere": lambda: rng.randrange(len(data)),
        "on a block": lambda: rng.randrange(-(-len(data) // BLOCK)) * BLOCK,
        "at a member": lambda: rng.choice(headers)[0] if headers else 0,
        "before the end blocks": lambda: max(0, len(data) - 2 * BLOCK - rng.randrange(2)),
    }
    how = rng.choice(sorted(choices))
    cut = choices[how]()
    return data[:cut], f"truncate {how} at {cut}"


def flip_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    header = _a_header(data, rng)
    if header is None:
        return data, "flip header (none)"
    mutated = bytearray(data)
    positions = sorted(rng.sample(range(BLOCK), rng.randint(1, 4)))
    for position in positions:
        mutated[header + position] ^= rng.randrange(1, 256)
    fixed = rng.random() < 0.5
    if fixed:
        _fix_checksum(mutated, header)
    return bytes(mutated), f"flip header at {header}+{positions} checksum fixed={fixed}"


def set_field(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Rewrite one header field with a hostile value and a valid checksum."""
    header = _a_header(data, rng)
    if header is None:
        return data, "set field (no header)"
    mutated = bytearray(data)
    field_name, value = rng.choice(
        [
            ("size", b"77777777777\0"),
            ("size", b"\x80" + b"\xff" * 11),  # base-256: enormous
            ("size", b"%011o\0" % rng.randrange(1 << 20)),
            ("size", b"-0000000001\0"),
            ("size", b"garbage!!!!\0"),
            ("type", rng.choice(TYPES)),
            ("name", rng.choice(TRICKY_NAMES).encode()[:100].ljust(100, b"\0")),
            ("link", b"../../../etc/shadow".ljust(100, b"\0")),
            ("magic", b"ustar\x0000"),
            ("mode", b"9999999\0"),
        ]
    )
    offsets = {"name": 0, "mode": 100, "size": 124, "type": 156, "link": 157, "magic": 257}
    start = header + offsets[field_name]
    mutated[start : start + len(value)] = value
    _fix_checksum(mutated, header)
    return bytes(mutated), f"set {field_name} of header at {header} to {value[:20]!r}"


def flip_payload(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    spans = [(start, min(start + size, len(data))) for _, start, size in _headers(data)]
    spans = [(start, end) for start, end in spans if start < end]
    if not spans:
        return data, "flip payload (none)"
    start, end = rng.choice(spans)
    mutated = bytearray(data)
    positions = sorted(rng.randrange(start, end) for _ in range(rng.randint(1, 8)))
    for position in positions:
        mutated[position] ^= rng.randrange(1, 256)
    return bytes(mutated), f"flip payload bytes {positions}"


def insert_garbage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    garbage = rng.randbytes(rng.choice([1, 7, BLOCK, rng.randrange(1, 2000)]))
    return data[:at] + garbage + data[at:], f"insert {len(garbage)} random bytes at {at}"


def drop_end_blocks(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    stripped = data.rstrip(b"\0")
    keep = len(stripped) + (-len(stripped) % BLOCK) + rng.choice([0, BLOCK])
    return data[:keep], f"drop end-of-archive blocks, keep {keep} bytes"


def append_garbage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    extra = rng.choice([b"\x01", rng.randbytes(BLOCK), b"\0" * BLOCK + b"x"])
    return data + extra, f"append {len(extra)} bytes"


# --- structural mutations (the archive rebuilt) ----------------------------------------------


def _members(data: bytes) -> list[Member] | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return [(info, _data(tar, info)) for info in tar]
    except Exception:  # as above: damaged bytes are not ours to rebuild
        return None


def _data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    stream = tar.extractfile(info) if info.isreg() and info.size < 1 << 20 else None
    return stream.read() if stream is not None else b""


def restructure(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    members = _members(data)
    if members is None:
        return data, "restructure (unreadable)"
    how = rng.choice(["insert", "rename", "delete", "duplicate", "swap", "retype", "pax", "bomb"])
    where = rng.randrange(len(members) + 1)
    if how == "insert":
        name = rng.choice(TRICKY_NAMES)
        payload = rng.choice([b"", rng.randbytes(rng.randrange(1, 3000)), b"{not json"])
        members.insert(where, _member(name, payload, rng.choice(TYPES[:3])))
        detail = f"{name!r} at {where}"
    elif how == "rename" and members:
        index = rng.randrange(len(members))
        name = rng.choice(TRICKY_NAMES)
        members[index][0].name = name
        detail = f"member {index} to {name!r}"
    elif how == "delete" and members:
        index = rng.randrange(len(members))
        del members[index]
        detail = f"member {index}"
    elif how == "duplicate" and members:
        index = rng.randrange(len(members))
        info, payload = members[index]
        members.insert(where, (_member(info.name, payload)[0], payload))
        detail = f"member {index} at {where}"
    elif how == "swap" and len(members) > 1:
        i, j = rng.sample(range(len(members)), 2)
        members[i], members[j] = members[j], members[i]
        detail = f"members {i} and {j}"
    elif how == "retype" and members:
        index = rng.randrange(len(members))
        kind = rng.choice(TYPES[2:8])
        members[index] = _member(members[index][0].name, b"", kind)
        detail = f"member {index} to type {kind!r}"
    elif how == "pax" and members:
        index = rng.randrange(len(members))
        record = rng.choice(PAX_RECORDS)
        members[index][0].pax_headers = record
        return _tar(members, tarfile.PAX_FORMAT), f"pax member {index} {record}"
    else:  # a PNG that declares 20000 x 20000 pixels in a few bytes
        members.insert(where, _member(f"{where:016x}bomb.png", _png_bomb()))
        how, detail = "bomb", f"at {where}"
    return _tar(members), f"{how} {detail}"


def _png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 60001 * 4)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


BYTE_MUTATIONS: list[Callable[[bytes, random.Random], tuple[bytes, str]]] = [
    truncate,
    flip_header,
    set_field,
    flip_payload,
    insert_garbage,
    drop_end_blocks,
    append_garbage,
]
SHARD_MUTATIONS = [*BYTE_MUTATIONS, restructure, restructure]


@dataclass
class Case:
    number: int
    base: int
    data: bytes
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"case {self.number} (base {self.base}): " + "; ".join(self.mutations)


def mutated_shard(seed: int, number: int, bases: list[bytes]) -> Case:
    """Case `number` of run `seed`: a base shard with one to three mutations."""
    rng = random.Random(f"shard:{seed}:{number}")
    base = rng.randrange(len(bases))
    case = Case(number, base, bases[base])
    if rng.random() < CONTROLS:
        case.mutations.append("none (a control)")
        return case
    for _ in range(rng.choice([1, 1, 2, 3])):
        mutation = rng.choice(SHARD_MUTATIONS)
        case.data, description = mutation(case.data, rng)
        case.mutations.append(description)
    return case


def regression_cases(first_number: int) -> list[Case]:
    """Shards the fuzzer once broke the step with (an unexpected ValueError, a negative size
    read as -1), kept in every run whatever the seed."""
    shards = []
    for size in ("abc", "-5"):
        members = base_members()[0]
        members[2][0].pax_headers = {"size": size}
        shards.append((_tar(members, tarfile.PAX_FORMAT), f"pax member 2 size {size!r}"))
    negative = bytearray(base_shards()[0])
    negative[124:136] = b"-0000000001\0"
    _fix_checksum(negative, 0)
    shards.append((bytes(negative), "first header size -1, checksum fixed"))
    return [
        Case(first_number + index, 0, data, [f"regression: {what}"])
        for index, (data, what) in enumerate(shards)
    ]


def mutated_output(seed: int, number: int, shard: bytes, manifest: bytes) -> tuple[Case, bytes]:
    """Case `number` for verify: an output shard or its manifest damaged (never both)."""
    rng = random.Random(f"output:{seed}:{number}")
    if rng.random() < CONTROLS:
        return Case(number, 0, shard, ["none (a control)"]), manifest
    if rng.random() < 0.75:
        case = Case(number, 0, shard)
        mutation = rng.choice(BYTE_MUTATIONS)
        case.data, description = mutation(shard, rng)
        case.mutations.append(description)
        return case, manifest
    document = json.loads(manifest)
    damaged, description = damage_manifest(document, manifest, rng)
    return Case(number, 0, shard, [description]), damaged


def damage_manifest(document: dict, text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A manifest that no longer describes its shard, or is not a manifest at all."""
    how = rng.choice(
        ["truncate", "not an object", "sha256", "size", "drop key", "member size", "retype"]
    )
    if how == "truncate":
        return text[: rng.randrange(len(text))], how
    if how == "not an object":
        return rng.choice([b"[]", b"null", b"42", b'"manifest"']), how
    if how == "sha256":
        document["output_sha256"] = "0" * 64
    elif how == "size":
        document["output_size"] += rng.choice([-BLOCK, 1, BLOCK])
    elif how == "drop key":
        key = rng.choice(["output_sha256", "output_size", "samples", "counts", "format"])
        del document[key]
        how = f"drop {key}"
    elif how == "member size" and document["samples"]:
        document["samples"][0]["members"][0]["size"] += 1
    else:
        key = rng.choice(["samples", "counts", "output_size", "output_sha256"])
        document[key] = rng.choice([None, "x", 1.5, [], {}])
        how = f"retype {key} to {document[key]!r}"
    return json.dumps(document).encode(), how
