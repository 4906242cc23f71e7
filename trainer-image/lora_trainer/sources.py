"""Step 1a: read every dataset source of the spec into rows that remember where they came from.

Sources: inline items, a ConfigMap key (mounted by the operator as a file), a file or folder
in the container, an http(s) URL, a hub dataset, a sample dataset shipped in this package.
File types: JSONL, JSON, CSV, Parquet, each also gzip, bzip2 or xz compressed (told by the
content's magic bytes, not the name). A row that cannot be read is recorded as an error with its
file and line and skipped; a source that cannot be reached at all fails the step.

Memory: a file is read whole, then parsed; a compressed one may decompress to at most
``max_decompressed_bytes()`` (2 GiB, ``$LORA_MAX_DECOMPRESSED_BYTES``), so a compression bomb
fails the step (exit 2) instead of the pod's memory.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from lora_contract.api import DatasetSource, FileType
from lora_contract.wire import CONFIGMAP_DIR, CONFIGMAP_DIR_ENV
from lora_trainer.errors import InvalidInput, StepError

# Where the operator mounts ConfigMap datasets: <dir>/<configmap name>/<key>.
DOWNLOAD_TIMEOUT_SECONDS = 120  # per connect or read
DOWNLOAD_DEADLINE_SECONDS = 1800  # for the whole download
MAX_DOWNLOAD_BYTES_ENV = "LORA_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_DOWNLOAD_BYTES = 2 << 30  # 2 GiB
MAX_DECOMPRESSED_BYTES_ENV = "LORA_MAX_DECOMPRESSED_BYTES"
DEFAULT_MAX_DECOMPRESSED_BYTES = 2 << 30  # 2 GiB
_CHUNK = 1 << 20
BUILTIN_DIR = Path(__file__).parent / "data"  # builtin dataset a-b is data/a_b.jsonl

_EXTENSIONS: dict[str, FileType] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
# Compressed files by their first bytes: the format's file suffix, its name, its reader.
_COMPRESSIONS: dict[bytes, tuple[str, str, Any]] = {
    b"\x1f\x8b": (".gz", "gzip", gzip.open), b"BZh": (".bz2", "bzip2", bz2.open),
    b"\xfd7zXZ\x00": (".xz", "xz", lzma.open),
}
# CSV cells that may hold chat messages as JSON text.
_JSON_CELLS = ("messages", "prompt", "completion")


@dataclass(frozen=True)
class RawRow:
    source: str
    location: str  # "train.jsonl:17", "inline-0 item 3", "org/data row 5"
    data: dict[str, Any]


@dataclass
class SourceRows:
    label: str
    rows: list[RawRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "train.jsonl:17: invalid JSON: ..."
    replaced: int = 0  # undecodable bytes read as U+FFFD (not valid UTF-8)


def configmap_dir() -> Path:
    return Path(os.environ.get(CONFIGMAP_DIR_ENV, CONFIGMAP_DIR))


def source_label(ds: DatasetSource, index: int) -> str:
    if ds.name:
        return ds.name
    if ds.config_map:
        return f"{ds.config_map.name}/{ds.config_map.key}"
    if ds.path:
        return Path(ds.path).name or ds.path
    if ds.url:
        return Path(urllib.parse.urlparse(ds.url).path).name or ds.url
    if ds.hub_id:
        return ds.hub_id
    if ds.builtin:
        return ds.builtin
    return f"inline-{index}"


def builtin_path(name: str) -> Path:
    return BUILTIN_DIR / f"{name.replace('-', '_')}.jsonl"


def max_decompressed_bytes() -> int:
    return int(os.environ.get(MAX_DECOMPRESSED_BYTES_ENV, DEFAULT_MAX_DECOMPRESSED_BYTES))


def _compression(path: Path) -> tuple[str, str, Any] | None:
    with open(path, "rb") as f:
        head = f.read(6)
    return next((found for magic, found in _COMPRESSIONS.items() if head.startswith(magic)), None)


def _content(path: Path, size: int, label: str) -> bytes:
    """At most ``size`` bytes (-1: all) of the file's content, decompressed if it is compressed."""
    compression = _compression(path)
    if compression is None:
        with open(path, "rb") as f:
            return f.read(size)
    _, name, opener = compression
    try:
        with opener(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:  # each format raises its own for bad data
        raise InvalidInput(f"dataset {label!r}: {path.name} is not a readable {name} file: {err}") \
            from err


def read_bytes(path: Path, label: str) -> bytes:
    """The file's content, decompressed within ``max_decompressed_bytes()`` if it is compressed."""
    if _compression(path) is None:
        return path.read_bytes()
    limit = max_decompressed_bytes()
    data = _content(path, limit + 1, label)
    if len(data) > limit:
        raise InvalidInput(f"dataset {label!r}: {path.name} decompresses to more than {limit} bytes "
                           f"(${MAX_DECOMPRESSED_BYTES_ENV}): a compression bomb, or a dataset to split into files")
    return data


def read_text(path: Path, out: SourceRows) -> str:
    """UTF-8 text (a BOM is dropped); undecodable bytes become U+FFFD and are counted in ``out``."""
    data = read_bytes(path, out.label)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        out.replaced += text.count("\ufffd") - data.decode("utf-8-sig", errors="ignore").count("\ufffd")
        return text


def _data_suffix(path: Path) -> str:
    """The suffix that names the data format: ``train.jsonl.gz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in {suffix for suffix, _, _ in _COMPRESSIONS.values()}:
        return suffixes[-2]
    return path.suffix.lower()


def file_type_of(path: Path, declared: FileType, label: str) -> FileType:
    """The declared type, else the extension's, else a sniff of the first character."""
    if declared != "auto":
        return declared
    by_extension = _EXTENSIONS.get(_data_suffix(path))
    if by_extension:
        return by_extension
    head = _content(path, 4096, label).decode("utf-8-sig", errors="replace").lstrip()
    if head.startswith("["):
        return "json"
    if head.startswith("{"):
        return "jsonl"
    raise InvalidInput(f"cannot tell the file type of {path}: give it an extension or set fileType")


# json.loads recurses once per nesting level; a value nested deeper than the interpreter's stack allows
# is no training item, so it is a malformed row, not a crash.
_TOO_DEEP = "invalid JSON: nested too deeply to parse"


def _object_or_error(value: Any, where: str, out: SourceRows) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    out.errors.append(f"{where}: expected a JSON object, got {type(value).__name__}")
    return None


def _read_jsonl(path: Path, name: str, out: SourceRows) -> None:
    for lineno, line in enumerate(read_text(path, out).split("\n"), 1):  # not splitlines: U+2028 is no break
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            out.errors.append(f"{where}: invalid JSON: {err.msg} (column {err.colno})")
            continue
        except RecursionError:
            out.errors.append(f"{where}: {_TOO_DEEP}")
            continue
        if (row := _object_or_error(value, where, out)) is not None:
            out.rows.append(RawRow(out.label, where, row))


def _read_json(path: Path, name: str, out: SourceRows) -> None:
    try:
        value = json.loads(read_text(path, out))
    except json.JSONDecodeError as err:
        out.errors.append(f"{name}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno}); file skipped")
        return
    except RecursionError:
        out.errors.append(f"{name}: {_TOO_DEEP}; file skipped")
        return
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]  # the product spec's {"data": [...]} datasets
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items, 1):
        where = f"{name}: item {i}"
        if (row := _object_or_error(item, where, out)) is not None:
            out.rows.append(RawRow(out.label, where, row))


def _messages_cell(cell: str) -> Any:
    """A cell holding a JSON list of {role, content} messages as that list; any other text as it is."""
    if not cell.lstrip().startswith("["):
        return cell
    try:
        value = json.loads(cell)
    except (json.JSONDecodeError, RecursionError):
        return cell
    is_messages = isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    return value if is_messages else cell


def _read_csv(path: Path, name: str, out: SourceRows) -> None:
    reader = csv.DictReader(io.StringIO(read_text(path, out), newline=""))
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a field over csv.field_size_limit(): the reader cannot go on
            out.errors.append(f"{name}: the record after line {reader.line_num}: malformed CSV: {err}; rest of the "
                              "file skipped")
            return
        where = f"{name}:{reader.line_num}"
        if None in record:
            out.errors.append(f"{where}: more cells than header columns")
            continue
        row: dict[str, Any] = {k: v for k, v in record.items() if k and v not in (None, "")}
        for key in _JSON_CELLS:
            if isinstance(row.get(key), str):
                row[key] = _messages_cell(row[key])
        out.rows.append(RawRow(out.label, where, row))


def _read_parquet(path: Path, name: str, out: SourceRows) -> None:
    source = path if _compression(path) is None else pa.BufferReader(read_bytes(path, out.label))
    try:
        records = pq.read_table(source).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        out.errors.append(f"{name}: unreadable Parquet file: {err}; file skipped")
        return
    for i, record in enumerate(records, 1):
        out.rows.append(RawRow(out.label, f"{name}: row {i}", {k: v for k, v in record.items() if v is not None}))


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def _read_file(path: Path, declared: FileType, out: SourceRows, name: str | None = None) -> None:
    _READERS[file_type_of(path, declared, out.label)](path, name or path.name, out)


def _files_under(folder: Path, declared: FileType) -> Iterator[Path]:
    """Data files of a folder tree, sorted; hidden entries (ConfigMap's ..data links) skipped."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if declared != "auto" or _data_suffix(path) in _EXTENSIONS:
            yield path


def _read_path(path: Path, declared: FileType, out: SourceRows) -> None:
    if path.is_dir():
        files = list(_files_under(path, declared))
        if not files:
            raise InvalidInput(f"dataset {out.label!r}: folder {path} holds no .jsonl/.json/.csv/.parquet file")
        for file in files:
            _read_file(file, declared, out, str(file.relative_to(path)))
    elif path.is_file():
        _read_file(path, declared, out)
    else:
        raise InvalidInput(f"dataset {out.label!r}: {path} does not exist")


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib also follows ftp://)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"refused redirect to {newurl} (only http and https are followed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# Client errors a later attempt can get past (timeout, rate limit); any other 4xx is the spec's to fix.
_RETRYABLE_HTTP = {408, 425, 429}


def max_download_bytes() -> int:
    return int(os.environ.get(MAX_DOWNLOAD_BYTES_ENV, DEFAULT_MAX_DOWNLOAD_BYTES))


def _fetch(url: str, target: Path, label: str) -> None:
    """GET ``url`` into ``target`` within ``DOWNLOAD_DEADLINE_SECONDS`` and ``max_download_bytes()``."""
    limit, deadline = max_download_bytes(), time.monotonic() + DOWNLOAD_DEADLINE_SECONDS
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    with opener.open(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, open(target, "wb") as f:
        if response.headers.get_content_type() == "text/html":
            raise InvalidInput(f"dataset {label!r}: {url} answered an HTML page, not a data file: a viewer or "
                               "login page instead of the raw file? (GitHub: use the raw.githubusercontent.com URL)")
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise InvalidInput(f"dataset {label!r}: {url} is larger than {limit} bytes "
                                   f"(${MAX_DOWNLOAD_BYTES_ENV})")
            if time.monotonic() > deadline:
                raise StepError(f"dataset {label!r}: downloading {url} took over {DOWNLOAD_DEADLINE_SECONDS} s")
            f.write(chunk)


def _download(url: str, declared: FileType, out: SourceRows) -> None:
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    with tempfile.TemporaryDirectory(prefix="lora-dataset-") as tmp:
        target = Path(tmp) / name
        try:
            _fetch(url, target, out.label)
        except urllib.error.HTTPError as err:
            message = f"dataset {out.label!r}: GET {url} answered HTTP {err.code} {err.reason}"
            if err.code in _RETRYABLE_HTTP or err.code >= 500:
                raise StepError(message) from err
            raise InvalidInput(f"{message}: the URL is wrong or needs access; a retry cannot help") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise StepError(f"dataset {out.label!r}: cannot download {url}: {reason}") from err
        _read_file(target, declared, out)


def _load_hub(ds: DatasetSource, out: SourceRows) -> None:
    """A dataset that does not exist, or a hub switched off with the dataset not cached, is the spec's or the
    pod's to fix (exit 2); anything else (network, hub outage) may pass on a retry."""
    try:
        table = datasets.load_dataset(ds.hub_id, name=ds.subset, split=ds.split)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise InvalidInput(f"dataset {out.label!r}: hub dataset {ds.hub_id} does not exist, or is gated or private "
                           f"(set hubTokenSecret): {err}") from err
    except Exception as err:  # the hub client raises many types; the message is what matters
        if datasets.config.HF_HUB_OFFLINE:
            raise InvalidInput(f"dataset {out.label!r}: hub dataset {ds.hub_id} is not in the local cache and the hub "
                               "is switched off ($HF_HUB_OFFLINE): mount the dataset and use path, or allow the hub"
                               ) from err
        raise StepError(f"dataset {out.label!r}: cannot load hub dataset {ds.hub_id} "
                        f"(split {ds.split}): {err}") from err
    for i, record in enumerate(table, 1):
        out.rows.append(RawRow(out.label, f"{ds.hub_id} row {i}", dict(record)))


def read_source(ds: DatasetSource, index: int) -> SourceRows:
    """All rows of one dataset source; unreadable rows are in ``errors``."""
    out = SourceRows(source_label(ds, index))
    if ds.inline is not None:
        for i, item in enumerate(ds.inline, 1):
            out.rows.append(RawRow(out.label, f"{out.label} item {i}", item))
    elif ds.config_map is not None:
        path = configmap_dir() / ds.config_map.name / ds.config_map.key
        if not path.is_file():
            raise InvalidInput(f"dataset {out.label!r}: {path} does not exist; is key {ds.config_map.key!r} in "
                               f"ConfigMap {ds.config_map.name!r} (mounted under ${CONFIGMAP_DIR_ENV})?")
        _read_file(path, ds.file_type, out, f"{ds.config_map.name}/{ds.config_map.key}")
    elif ds.path is not None:
        _read_path(Path(ds.path), ds.file_type, out)
    elif ds.url is not None:
        _download(ds.url, ds.file_type, out)
    elif ds.hub_id is not None:
        _load_hub(ds, out)
    elif ds.builtin is not None:
        _read_file(builtin_path(ds.builtin), "jsonl", out)
    return out
