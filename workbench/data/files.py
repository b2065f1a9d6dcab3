"""Turn a data file into a table: compression, text encoding, delimiter and JSON lines, each
problem named by file and line, each repair counted as a `DataFix`.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
import warnings
import zipfile
from pathlib import Path

import pandas as pd

from workbench.data.fixes import DataFix, DataValidationError

FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# A compressed file may expand at most this far: a small upload must not fill the memory.
MAX_DECOMPRESSED_BYTES = 1024**3
_DECOMPRESSORS = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip")
_MAGIC = {b"\x1f\x8b": ".gz", b"BZh": ".bz2", b"\xfd7zXZ": ".xz", b"PK\x03\x04": ".zip"}
_DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_UNNAMED = re.compile(r"^Unnamed: \d+$")


def read_file(path: Path) -> tuple[pd.DataFrame, list[DataFix], bool]:
    """Read a CSV, TSV, JSONL, JSON or Parquet file, optionally gzip, bz2, xz or zip compressed.

    Args:
        path: The file.

    Returns:
        The table (text columns stay text), the fixes made, and whether the format carries types
        (JSON, Parquet), so a number written as text there is worth a note.

    Raises:
        DataValidationError: On an empty, header-only, unreadable or unknown file.
    """
    raw, kind = _decompress(path)
    if kind not in FORMATS:
        _unknown_type(path, kind)
    if not raw.strip():
        what = "one JSON object per line" if kind == ".jsonl" else "a header row and data rows"
        raise DataValidationError(f"{path}: the file is empty; expected {what}")

    if kind == ".parquet":
        table, fixes = _read_parquet(raw, path), []
    else:
        text, fixes = _decode(raw, path)
        if kind in (".csv", ".tsv"):
            table, more = _read_delimited(text, path, "," if kind == ".csv" else "\t")
        elif kind == ".jsonl":
            table, more = _read_json_lines(text, path), []
        else:
            table, more = _read_json(text, path)
        fixes += more
    if table.empty:
        raise DataValidationError(
            f"{path}: has a header ({', '.join(map(str, table.columns))}) but no data rows"
        )
    return table, fixes, kind in (".jsonl", ".json", ".parquet")


def drop_unnamed_columns(table: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, list[DataFix]]:
    """Drop columns with no header name (pandas calls them `Unnamed: <i>`), counted."""
    unnamed = [c for c in table.columns if _UNNAMED.match(str(c))]
    if not unnamed:
        return table, []
    positions = [table.columns.get_loc(c) + 1 for c in unnamed]
    filled = sum(int(table[c].astype(str).str.strip().ne("").any()) for c in unnamed)
    held = f"{filled} of them held values" if filled else "all empty"
    message = (
        f"{origin}: dropped {len(unnamed)} column(s) with no header name (column "
        f"{', '.join(map(str, positions))}; {held}). Name a column in the header to keep it."
    )
    return table.drop(columns=unnamed), [DataFix("unnamed_columns", len(unnamed), message)]


def _decompress(path: Path) -> tuple[bytes, str]:
    """The file's bytes, decompressed, and the data format its (inner) name says."""
    suffixes = [s.lower() for s in path.suffixes]
    last = suffixes[-1] if suffixes else ""
    if last not in FORMATS and last not in _COMPRESSED:
        _unknown_type(path, last)
    raw = path.read_bytes()
    compression = next((c for m, c in _MAGIC.items() if raw.startswith(m)), None)
    if compression is None:
        return raw, last
    if compression == ".zip":
        return _unzip(raw, path)
    # train.csv.gz holds a .csv; so does a gzip file that kept the name train.csv.
    inner = suffixes[-2] if last in _COMPRESSED and len(suffixes) > 1 else last
    try:
        with _DECOMPRESSORS[compression](fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataValidationError(
            f"{path}: could not be decompressed as {compression.lstrip('.')} ({err})"
        ) from err
    _check_expanded(data, path)
    return data, inner


def _unknown_type(path: Path, kind: str) -> None:
    raise DataValidationError(
        f"{path}: unknown file type {kind!r}; expected one of {sorted(FORMATS)}, optionally "
        "compressed (.gz, .bz2, .xz, .zip)"
    )


def _unzip(raw: bytes, path: Path) -> tuple[bytes, str]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as err:
        raise DataValidationError(f"{path}: could not be opened as a zip archive ({err})") from err
    with archive:
        members = [
            m
            for m in archive.infolist()
            if not m.is_dir()
            and not m.filename.startswith("__MACOSX/")
            and not Path(m.filename).name.startswith(".")
        ]
        if len(members) != 1:
            names = ", ".join(m.filename for m in members[:5]) or "no files"
            raise DataValidationError(
                f"{path}: the zip archive holds {len(members)} files ({names}); put exactly one "
                f"data file ({', '.join(FORMATS)}) in it"
            )
        with archive.open(members[0]) as stream:
            data = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    _check_expanded(data, path)
    return data, Path(members[0].filename).suffix.lower()


def _check_expanded(data: bytes, path: Path) -> None:
    if len(data) > MAX_DECOMPRESSED_BYTES:
        raise DataValidationError(
            f"{path}: expands to more than {MAX_DECOMPRESSED_BYTES // 1024**2} MB when "
            "decompressed; split it or use a sample of the rows"
        )


def _decode(raw: bytes, path: Path) -> tuple[str, list[DataFix]]:
    """UTF-8 (a byte-order mark is removed); UTF-16 with its mark; else Windows-1252, counted."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        message = f"{path}: read as UTF-16 (it starts with a UTF-16 byte-order mark)"
        return raw.decode("utf-16"), [DataFix("encoding", 1, message)]
    fixes = []
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        message = f"{path}: removed a UTF-8 byte-order mark from the start of the file"
        fixes.append(DataFix("bom", 1, message))
    try:
        return raw.decode("utf-8"), fixes
    except UnicodeDecodeError as err:
        first_line = raw[: err.start].count(b"\n") + 1
        bad = [i for i, line in enumerate(raw.split(b"\n"), start=1) if not _is_utf8(line)]
        encoding = "Windows-1252"
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            encoding, text = "Latin-1", raw.decode("latin-1")
        message = (
            f"{path}: not valid UTF-8 ({len(bad)} line(s), first at line {first_line}: byte "
            f"0x{raw[err.start]:02x}); read as {encoding}. Check accented characters, or save "
            "the file as UTF-8."
        )
        return text, [*fixes, DataFix("encoding", len(bad), message, tuple(bad[:10]))]


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_delimited(text: str, path: Path, sep: str) -> tuple[pd.DataFrame, list[DataFix]]:
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    sep, fixes = _pick_delimiter(text, path, sep, header)
    header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
    options = dict(sep=sep, dtype=str, keep_default_na=False, index_col=False)
    try:
        with warnings.catch_warnings():
            # pandas drops the extra fields of rows longer than the header with only a warning.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), **options), fixes
    except pd.errors.ParserWarning:
        pass
    except pd.errors.ParserError as err:
        if "Expected" not in str(err):
            raise _parse_error(path, sep, err) from err
    except (ValueError, csv.Error) as err:
        raise _parse_error(path, sep, err) from err

    # Rows longer than the header: fine when the extra fields are empty (trailing delimiters).
    width = _check_extra_fields(text, path, sep, len(header))
    names = header + [f"Unnamed: {i}" for i in range(len(header), width)]
    table = pd.read_csv(io.StringIO(text), header=0, names=names, **options)
    return table, fixes


def _pick_delimiter(
    text: str, path: Path, expected: str, header: list[str]
) -> tuple[str, list[DataFix]]:
    """The expected delimiter, or another one when the header only splits on that one."""
    if len(header) > 1:
        return expected, []
    line = text.split("\n", 1)[0]
    counts = {d: len(next(csv.reader([line], delimiter=d), [])) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    if counts[best] < 2:
        return expected, []
    message = (
        f"{path}: read as {_DELIMITERS[best]}-separated: the header has no "
        f"{_DELIMITERS[expected]} but {counts[best] - 1} {_DELIMITERS[best]}(s). Save it with "
        f"the right extension ({'.tsv' if best == chr(9) else '.csv'}) to silence this."
    )
    return best, [DataFix("delimiter", 1, message)]


def _check_extra_fields(text: str, path: Path, sep: str, named: int) -> int:
    """Widest row; raise when a row has values beyond the header's columns."""
    width = named
    for row, fields in enumerate(csv.reader(io.StringIO(text), delimiter=sep)):
        width = max(width, len(fields))
        extra = [f for f in fields[named:] if f.strip()]
        if row and extra:
            raise DataValidationError(
                f"{path}, row {row}: {len(fields)} fields but the header names {named} (extra "
                f"value {extra[0][:40]!r}). Quote fields that contain "
                f"{_DELIMITERS.get(sep, repr(sep))}s, or add the column to the header."
            )
    return width


def _parse_error(path: Path, sep: str, err: Exception) -> DataValidationError:
    return DataValidationError(
        f"{path}: could not be parsed as {_DELIMITERS.get(sep, repr(sep))}-separated text "
        f"({err}). Quote fields that contain the delimiter or a line break."
    )


def _read_json_lines(text: str, path: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataValidationError(
                f"{path}, line {number}: invalid JSON ({err.msg} at column {err.colno}); fix "
                "or remove that line"
            ) from err
        if not isinstance(record, dict):
            raise DataValidationError(
                f"{path}, line {number}: expected a JSON object such as "
                f'{{"query": ..., "passage": ..., "label": ...}}, got {type(record).__name__}'
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(text: str, path: Path) -> tuple[pd.DataFrame, list[DataFix]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            raise DataValidationError(
                f"{path}, line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})"
            ) from err
        # Several objects, one per line: JSON lines saved as .json.
        message = f"{path}: holds one JSON object per line; read as JSON lines (.jsonl)"
        return _read_json_lines(text, path), [DataFix("json_lines", 1, message)]
    if isinstance(data, dict):
        data = data.get("data", data)
    try:
        return pd.DataFrame(data), []
    except ValueError as err:
        raise DataValidationError(
            f"{path}: expected a list of records or a mapping of columns, got "
            f"{type(data).__name__} ({err})"
        ) from err


def _read_parquet(raw: bytes, path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # pyarrow raises its own error types for a broken file
        raise DataValidationError(f"{path}: could not be read as Parquet ({err})") from err
