"""Guards of an exposed workbench: typed paths stay under the allowed folders, uploads cannot
leave their folder or pass the size cap, and hub tokens never reach a log or a run folder.
"""

from __future__ import annotations

import logging
import re

import pytest

from workbench.runs import RunFolder
from workbench.security import (
    ALLOWED_ROOTS_ENV,
    SAMPLES_ROOT,
    PathNotAllowedError,
    SecretRedactingFilter,
    UploadTooLargeError,
    allowed_roots,
    check_upload_size,
    confine_path,
    find_tokens,
    install_log_redaction,
    max_upload_bytes,
    redact,
    safe_upload_name,
    scrub_secrets,
    upload_destination,
)

# The shape of a Hugging Face user token: "hf_" and 34 letters and digits (not a real one).
TOKEN = "hf_" + "Xq7RkP2vLm9TzW4bNc8YdJ5sHf3GaU6eKo"


@pytest.fixture
def roots(tmp_path):
    """A runs folder that may be opened, and a secrets folder beside it that may not."""
    (tmp_path / "runs" / "scifact" / "final").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "id_rsa").write_text("private key")
    return [(tmp_path / "runs").resolve()]


# Path confinement


def test_confine_path_accepts_a_path_inside_a_root(roots, tmp_path):
    path = tmp_path / "runs" / "scifact" / "final"
    assert confine_path(path, roots=roots) == path.resolve()
    assert confine_path(tmp_path / "runs" / "not-yet-made", roots=roots).parent == roots[0]


def test_confine_path_accepts_a_relative_path_from_the_working_folder(roots, monkeypatch):
    monkeypatch.chdir(roots[0])
    assert confine_path("scifact/final", roots=roots) == roots[0] / "scifact" / "final"


@pytest.mark.parametrize(
    "typed",
    [
        "{tmp}/runs/../secrets/id_rsa",
        "{tmp}/runs/scifact/../../secrets",
        "/etc/passwd",
        "{tmp}/runs-old/model",  # shares the root's name as a prefix, but is another folder
    ],
    ids=["dotdot", "dotdot-deep", "absolute", "prefix"],
)
def test_confine_path_refuses_an_escape_naming_the_path(roots, tmp_path, typed):
    typed = typed.format(tmp=tmp_path)
    with pytest.raises(PathNotAllowedError, match=re.escape(f"{typed!r} is outside the folders")):
        confine_path(typed, roots=roots)


def test_confine_path_refuses_a_symlink_that_leads_out(roots, tmp_path):
    link = roots[0] / "scifact" / "shortcut"
    link.symlink_to(tmp_path / "secrets")
    typed = str(link / "id_rsa")
    with pytest.raises(PathNotAllowedError, match=re.escape(f"{typed!r} is outside")) as caught:
        confine_path(typed, roots=roots)
    assert f"add a folder to {ALLOWED_ROOTS_ENV}" in str(caught.value)
    # A link that stays inside is fine.
    (roots[0] / "latest").symlink_to(roots[0] / "scifact")
    assert (
        confine_path(roots[0] / "latest" / "final", roots=roots) == roots[0] / "scifact" / "final"
    )


def test_confine_path_refuses_a_path_that_is_not_usable(roots):
    with pytest.raises(PathNotAllowedError, match=r"'runs/\\x00model' is not a usable path"):
        confine_path("runs/\x00model", roots=roots)


def test_confine_path_is_a_permission_error_for_callers_that_catch_those(roots):
    with pytest.raises(PermissionError):
        confine_path("/etc/passwd", roots=roots)


def test_allowed_roots_come_from_the_environment_or_a_space(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert allowed_roots() is None  # a local session: any path its user can read
    assert confine_path("/etc/passwd") == confine_path("/etc/passwd", roots=None)

    monkeypatch.setenv("SPACE_ID", "someone/reranker-workbench")
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path / "runs"))
    assert allowed_roots() == [(tmp_path / "runs").resolve(), SAMPLES_ROOT]

    monkeypatch.setenv(ALLOWED_ROOTS_ENV, f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    assert allowed_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    with pytest.raises(PathNotAllowedError, match="is outside the folders"):
        confine_path(tmp_path / "runs")


# Uploads


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\Users\\me\\train.csv", "train.csv"),
        ("C:train.csv", "train.csv"),
        ("/abs/path/eval.jsonl", "eval.jsonl"),
        ("..", "upload"),
        ("", "upload"),
        (".bashrc", "bashrc"),
        ("train\x00.csv.exe", "train.csv.exe"),
        ("dev\n.csv", "dev.csv"),
        ("q&a <pairs>;.csv", "q_a _pairs__.csv"),
        ("train\uff0f..\uff0fx.csv", "train_.._x.csv"),  # full-width slashes are not slashes
    ],
)
def test_safe_upload_name_reduces_a_name_to_one_plain_file(name, safe):
    assert safe_upload_name(name) == safe


def test_safe_upload_name_cuts_long_names_but_keeps_the_extension():
    safe = safe_upload_name("a" * 300 + ".jsonl.gz")
    assert len(safe) == 120 and safe.endswith(".gz")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "..", "/tmp/x", "a/../../b.csv", "..\\..\\c.csv", "\x00"]
)
def test_upload_destination_never_leaves_the_upload_folder(tmp_path, name):
    folder = tmp_path / "uploads"
    folder.mkdir()
    target = upload_destination(folder, name)
    assert target.parent == folder.resolve()
    assert target.name not in ("", ".", "..")


def test_check_upload_size_cap_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "train.csv"
    path.write_bytes(b"query,passage,label\n" * 60_000)  # 1.1 MB
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "1")
    assert max_upload_bytes() == 1024 * 1024
    with pytest.raises(
        UploadTooLargeError,
        match=r"^train\.csv is 1\.1 MB, over the 1\.0 MB upload limit\. Upload a smaller file "
        r"\(fewer rows, or compressed as \.csv\.gz / \.jsonl\.gz\), or raise the limit with "
        r"WORKBENCH_MAX_UPLOAD_MB\.$",
    ):
        check_upload_size(path)
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "2")
    assert check_upload_size(path) == path.stat().st_size


def test_check_upload_size_names_a_bad_cap_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "200MB")
    with pytest.raises(ValueError, match="WORKBENCH_MAX_UPLOAD_MB must be a number of megabytes"):
        check_upload_size(tmp_path)


# Hub tokens


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"HF_TOKEN={TOKEN}",
        f"https://user:{TOKEN}@huggingface.co/org/model",
        f"HF_TOKEN_{TOKEN}",  # glued to a name by an underscore
        f"{TOKEN}_backup.txt",
        f'{{"token": "{TOKEN}"}}',
    ],
)
def test_scrub_secrets_removes_a_hub_token_wherever_it_sits(text):
    scrubbed = scrub_secrets(text)
    assert TOKEN not in scrubbed and "***" in scrubbed


def test_scrub_secrets_keeps_ordinary_text_and_removes_given_secrets():
    text = "hf_hub_download of cross-encoder/ms-marco-MiniLM-L-12-v2 (max_tokens 512)"
    assert scrub_secrets(text) == text
    assert scrub_secrets("password s3cret-passw0rd", ["s3cret-passw0rd"]) == "password ***"


def test_redact_blanks_secret_keys_and_scrubs_strings():
    config = {"hub_token": "anything", "HF_TOKEN": "", "max_tokens": 512, "note": f"t={TOKEN}"}
    assert redact(config) == {
        "hub_token": "***",
        "HF_TOKEN": "",
        "max_tokens": 512,
        "note": "t=***",
    }
    assert redact([{"api_key": "k"}, ("password", 3)]) == [{"api_key": "***"}, ["password", 3]]


def test_redacting_filter_scrubs_message_arguments_and_traceback(caplog):
    log = logging.getLogger("workbench.test_security.filter")
    caplog.handler.addFilter(SecretRedactingFilter())
    try:
        raise OSError(f"401 Unauthorized for token {TOKEN}")
    except OSError:
        log.exception("Push to the hub failed with %s", {"token": TOKEN})
    record = caplog.records[-1]
    assert TOKEN not in caplog.text
    assert "Push to the hub failed with {'token': '***'}" in caplog.text
    assert "401 Unauthorized for token ***" in record.exc_text


def test_install_log_redaction_covers_every_logger_and_handler(caplog):
    factory = logging.getLogRecordFactory()
    caplog.set_level(logging.INFO)
    try:
        install_log_redaction()
        install_log_redaction()  # once only
        logging.getLogger("transformers.any").warning("login with %s", TOKEN)
        logging.getLogger("workbench.x").info(f"token {TOKEN} in an f-string")
    finally:
        logging.setLogRecordFactory(factory)
    assert TOKEN not in caplog.text
    assert [r.getMessage() for r in caplog.records[-2:]] == [
        "login with ***",
        "token *** in an f-string",
    ]


def test_run_folder_files_never_hold_a_token(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_json("config.json", {"hub_token": TOKEN, "base_model": "minilm-l6"})
    run.write_text("report.md", f"Pushed with {TOKEN}\n")
    assert find_tokens(run.root) == []
    assert '"hub_token": "***"' in (run.root / "config.json").read_text()


def test_find_tokens_finds_a_token_planted_in_a_run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_json("results.json", {"finetuned": {"ndcg@10": 0.7}})
    (run.checkpoints / "checkpoint-2").mkdir(parents=True)
    planted = run.checkpoints / "checkpoint-2" / "training_args.bin"
    planted.write_bytes(b"\x80\x04pickle\x00hub_token\x00" + TOKEN.encode() + b"\x00")
    (run.root / "train.log").write_text(f"export HF_TOKEN={TOKEN}\n")
    assert find_tokens(run.root) == [planted, run.root / "train.log"]
