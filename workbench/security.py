"""Guards for an exposed workbench: typed paths stay under allowed folders, upload names cannot
escape their folder, uploads have a size cap, and hub tokens are scrubbed from logs and files.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

ALLOWED_ROOTS_ENV = "WORKBENCH_ALLOWED_ROOTS"
MAX_UPLOAD_MB_ENV = "WORKBENCH_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 200
SAMPLES_ROOT = Path(__file__).resolve().parent / "samples"

# Hugging Face user and org tokens ("hf_" + 34 letters and digits; older "api_org_" ones).
# Not `\b`: an underscore next to the token (`HF_TOKEN_hf_...`, `hf_..._backup`) is a word
# character, so `\b` would let a token through.
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:hf|api_org)_[A-Za-z0-9]{20,}")
# Keys whose values are secrets: `token`, `hub_token`, `password`, ... (not `max_tokens`).
_SECRET_KEY = re.compile(
    r"(^|_)(token|password|passwd|secret|api_key|apikey|authorization)$", re.IGNORECASE
)
REDACTED = "***"
_UPLOAD_NAME_LIMIT = 120
# Files bigger than this are weights or data, not places a token gets written.
_SCAN_LIMIT_BYTES = 10 * 1024 * 1024


class PathNotAllowedError(PermissionError):
    """A path lies outside the folders the workbench may read or write."""


class UploadTooLargeError(ValueError):
    """An uploaded file is over the size cap."""


def allowed_roots() -> list[Path] | None:
    """The folders typed paths must stay under, or None when any path is allowed.

    `WORKBENCH_ALLOWED_ROOTS` lists them, separated by `os.pathsep` (`:` on Linux). Unset, a
    Hugging Face Space (`SPACE_ID` is set) allows the run folder (`WORKBENCH_RUNS_DIR`, default
    `runs`) and the bundled samples; a local session allows any path its user can read.

    Returns:
        Resolved folders, or None for no confinement.
    """
    raw = os.environ.get(ALLOWED_ROOTS_ENV, "").strip()
    if raw:
        return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    if os.environ.get("SPACE_ID"):
        from workbench.runs import runs_root

        return [runs_root().resolve(), SAMPLES_ROOT]
    return None


def confine_path(path: str | os.PathLike, *, roots: Sequence[Path] | None = None) -> Path:
    """Resolve a user-typed path and refuse it unless it lies under an allowed folder.

    Symbolic links are followed before the check, so a link inside a root that points outside
    is refused; `..` parts are resolved the same way.

    Args:
        path: The path as typed (relative paths count from the working folder).
        roots: Allowed folders; defaults to `allowed_roots()` (None there allows any path).

    Returns:
        The resolved path.

    Raises:
        PathNotAllowedError: If the path is outside every root, or is not a valid path.

    Example:
        >>> confine_path("runs/scifact/final", roots=[Path("runs").resolve()])
    """
    roots = allowed_roots() if roots is None else [Path(r).resolve() for r in roots]
    text = os.fspath(path)
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, ValueError) as err:
        raise PathNotAllowedError(f"{text!r} is not a usable path: {err}") from err
    if roots is None or any(resolved.is_relative_to(root) for root in roots):
        return resolved
    listed = ", ".join(str(r) for r in roots)
    raise PathNotAllowedError(
        f"{text!r} is outside the folders this workbench may open ({listed}). Use a path "
        f"under one of them, or add a folder to {ALLOWED_ROOTS_ENV}."
    )


def safe_upload_name(name: str) -> str:
    """Reduce an uploaded file's name to a plain file name that cannot leave its folder.

    Directory parts (`/` and `\\`), drive letters, control characters and leading dots are
    dropped; characters other than letters, digits, `.`, `-`, `_` and space become `_`; the
    name is cut to 120 characters, keeping its extension.

    Example:
        >>> safe_upload_name("../../etc/passwd")
        'passwd'
        >>> safe_upload_name("C:\\\\Users\\\\me\\\\train.csv")
        'train.csv'
    """
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))[-1]
    base = re.sub(r"^[A-Za-z]:", "", base)
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    if not base:
        return "upload"
    stem, dot, suffix = base.rpartition(".")
    if len(base) > _UPLOAD_NAME_LIMIT:
        keep = _UPLOAD_NAME_LIMIT - len(suffix) - 1 if dot and len(suffix) < 16 else None
        base = f"{stem[:keep]}.{suffix}" if keep else base[:_UPLOAD_NAME_LIMIT]
    return base


def upload_destination(folder: str | os.PathLike, name: str) -> Path:
    """Where an upload called `name` is stored inside `folder`; never outside it.

    Raises:
        PathNotAllowedError: If the result would leave `folder` (a bug in `safe_upload_name`).
    """
    root = Path(folder).resolve()
    target = (root / safe_upload_name(name)).resolve()
    if target.parent != root:
        raise PathNotAllowedError(f"Upload name {name!r} would leave the upload folder {root}")
    return target


def max_upload_bytes() -> int:
    """The upload size cap: `WORKBENCH_MAX_UPLOAD_MB` megabytes (default 200)."""
    raw = os.environ.get(MAX_UPLOAD_MB_ENV)
    try:
        megabytes = float(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError as err:
        raise ValueError(f"{MAX_UPLOAD_MB_ENV} must be a number of megabytes, got {raw!r}") from err
    return int(megabytes * 1024 * 1024)


def check_upload_size(path: str | os.PathLike, *, max_bytes: int | None = None) -> int:
    """Refuse a file over the upload cap, before anything reads it.

    Args:
        path: The uploaded file.
        max_bytes: The cap; defaults to `max_upload_bytes()`.

    Returns:
        The file's size in bytes.

    Raises:
        UploadTooLargeError: If the file is bigger than the cap.
    """
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    size = Path(path).stat().st_size
    if size > limit:
        raise UploadTooLargeError(
            f"{safe_upload_name(Path(path).name)} is {_size(size)}, over the "
            f"{_size(limit)} upload limit. Upload a smaller file (fewer rows, or "
            f"compressed as .csv.gz / .jsonl.gz), or raise the limit with {MAX_UPLOAD_MB_ENV}."
        )
    return size


def scrub_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace Hugging Face tokens, and any of `secrets`, in `text` with `***`."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return _TOKEN.sub(REDACTED, text)


def redact(value, secrets: Iterable[str] = ()):
    """Copy a JSON-like value with tokens scrubbed and secret-named keys blanked.

    A key that names a secret (`token`, `hub_token`, `password`, `api_key`, ...) keeps its key
    but its non-empty value becomes `***`; every other string is passed through `scrub_secrets`.
    """
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub_secrets(value, secrets)
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) and value[k] else redact(value[k], secrets)
            for k in value
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


def find_tokens(folder: str | os.PathLike) -> list[Path]:
    """Files under `folder` (up to 10 MB each, any format) that hold a Hugging Face token.

    Use it before publishing a folder: a run folder or model card must never carry one.
    """
    pattern = re.compile(_TOKEN.pattern.encode())
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.stat().st_size <= _SCAN_LIMIT_BYTES:
            if pattern.search(path.read_bytes()):
                found.append(path)
    return found


class SecretRedactingFilter(logging.Filter):
    """A logging filter that scrubs tokens from a record's message and traceback.

    Attach it to a handler (`handler.addFilter(SecretRedactingFilter())`); or call
    `install_log_redaction()` once to cover every logger and handler of the process.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record, self.secrets)
        return True


def install_log_redaction() -> None:
    """Scrub tokens from every log record this process creates, whatever its handler.

    Wraps the log record factory (once; later calls do nothing), so loggers and handlers added
    later are covered too.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_workbench_redacts", False):
        return

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _scrub_record(record, ())
        return record

    redacting_factory._workbench_redacts = True
    logging.setLogRecordFactory(redacting_factory)


def _scrub_record(record: logging.LogRecord, secrets: tuple[str, ...]) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        # A malformed call (arguments that do not fit the format); logging reports it later.
        return
    scrubbed = scrub_secrets(message, secrets)
    if scrubbed != message:
        record.msg, record.args = scrubbed, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub_secrets(record.exc_text, secrets)


def _size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"
