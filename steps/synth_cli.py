"""`shardflow synth DIR`: write synthetic demo shards, so anyone can try shardflow offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import positive_int
from .synthetic import write_shards


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic demo shards (jpg + json samples)",
        description="Write DIR/PREFIX-000000.tar ...: JPEG images of 500 to 1024 px with a "
        "shape whose kind is the class, and a JSON member {cls, label, width, height}.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--shards", type=positive_int, default=4)
    parser.add_argument("--samples", type=positive_int, default=24, help="samples per shard")
    parser.add_argument("--prefix", default="in")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = write_shards(
        args.directory, shards=args.shards, samples=args.samples, prefix=args.prefix
    )
    total = sum(p.stat().st_size for p in paths)
    print(
        f"wrote {len(paths)} shards of {args.samples} samples to {args.directory} "
        f"({total / 1e6:.1f} MB): {paths[0].name} .. {paths[-1].name}"
    )
    return 0
