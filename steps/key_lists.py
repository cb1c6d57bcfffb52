"""Key lists for `shardflow reshard --keep-keys/--drop-keys`: which samples a reshard keeps.

The DataComp flow filters a metadata table, then reshards by the surviving uids; the list
comes as whatever the filter wrote. Accepted, at any URL shardflow reads:

- a text file, one key a line (blank lines ignored; `.txt`, `.keys` or any other name);
- a JSON list of strings (`.json`);
- a NumPy array (`.npy`), loaded with `allow_pickle=False`: a list is data, never code;
  strings, bytes (UTF-8) or integers (written in decimal, as webdataset keys made from uids);
- a Parquet column (`.parquet`, with the optional pyarrow): `--keys-column`, else the only
  column, else the first of `key`, `__key__`, `uid`.

The keys are held in memory, as a Python set.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from . import storage
from .errors import UsageError
from .redact import redact_url

KEY_COLUMNS = ("key", "__key__", "uid")
MAX_LIST_BYTES = 8 << 30  # read whole; beyond this a list is a mistake (a shard given as keys)


def load_keys(url: str, options: storage.StorageOptions, *, column: str | None = None) -> set[str]:
    """The keys of the list at `url`; UsageError when it cannot be read as one."""
    shown = redact_url(url)
    storage.check_url(url, writing=False)
    try:
        data = storage.read_bytes(url, options)
    except Exception as exc:  # any back-end's error: the run cannot start
        raise UsageError(f"cannot read the key list {shown}: {type(exc).__name__}: {exc}") from None
    if data is None:
        raise UsageError(f"key list {shown} does not exist")
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"key list {shown} has {len(data)} bytes, more than a key list holds")
    path = (urlsplit(url).path if "://" in url else url).lower()
    if path.endswith(".npy"):
        keys = _from_npy(data, shown)
    elif path.endswith(".parquet"):
        keys = _from_parquet(data, shown, column)
    elif path.endswith(".json"):
        keys = _from_json(data, shown)
    else:
        keys = _from_text(data, shown)
    return _checked(keys, shown)


def _from_text(data: bytes, shown: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"key list {shown} is not UTF-8 text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_json(data: bytes, shown: str) -> list[str]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"key list {shown} is not valid JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"key list {shown} must be a JSON list of strings")
    return value


def _from_npy(data: bytes, shown: str) -> list[str]:
    import numpy

    try:
        array = numpy.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refused
        raise UsageError(f"key list {shown} is not a plain .npy array: {exc}") from None
    if array.ndim != 1:
        raise UsageError(f"key list {shown} must be one-dimensional, not of shape {array.shape}")
    return _values(array.tolist(), shown)


def _from_parquet(data: bytes, shown: str, column: str | None) -> list[str]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise UsageError(
            f"key list {shown}: Parquet needs pyarrow (pip install 'shardflow[parquet]')"
        ) from None
    try:
        # One thread: the CLI may exit at once on a bad column, and pyarrow aborts the process
        # when it exits while its pool threads are still being started.
        table = parquet.read_table(io.BytesIO(data), use_threads=False)
    except Exception as exc:  # pyarrow's own errors
        raise UsageError(f"key list {shown} is not a Parquet file: {exc}") from None
    names = table.column_names
    chosen = column or (
        names[0] if len(names) == 1 else next((name for name in KEY_COLUMNS if name in names), None)
    )
    if chosen is None or chosen not in names:
        raise UsageError(
            f"key list {shown}: no column {column or ' or '.join(KEY_COLUMNS)!r} among "
            f"{names}; name it with --keys-column"
        )
    return _values(table.column(chosen).to_pylist(), shown)


def _values(values: Iterable[object], shown: str) -> list[str]:
    keys = []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise UsageError(f"key list {shown} holds {type(value).__name__} values, not keys")
        keys.append(value)
    return keys


def _checked(keys: list[str], shown: str) -> set[str]:
    if not keys:
        raise UsageError(f"key list {shown} is empty")
    return set(keys)
