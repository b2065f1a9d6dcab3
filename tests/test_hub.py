"""push_to_hub against a local HTTP server that speaks just enough of the hub API.

The server records every request. huggingface_hub's create_repo + upload_folder send: the repo
creation, a preupload call (the server answers "lfs" for the weights, "regular" for the rest),
the LFS batch call and the PUT of the weights, the README metadata check, and the ndjson
commit. The Xet protocol (the
client's default when hf_xet is installed) needs a storage server of its own, so the client is
set to the LFS path that hubs without Xet use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workbench.hub import push_to_hub

TOKEN = "hf_" + "a1B2c3D4e5" * 4
LFS_FROM_BYTES = 1_000_000


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes


@dataclass
class FakeHub:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    # Files as the hub would hold them: path -> bytes (regular) or LFS oid -> bytes.
    committed: dict[str, bytes] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    lfs_pointers: dict[str, str] = field(default_factory=dict)


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            self._record()
            self._send(404, {"error": "not found"})

        def do_PUT(self):
            body = self._record()
            oid = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/lfs-upload/"):
                return self._send(404, {"error": "not found"})
            hub.lfs[oid] = body
            self._send(200, {})

        def do_POST(self):
            body = self._record()
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if "/preupload/" in path:
                return self._preupload(json.loads(body))
            if path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(json.loads(body))
            if "/commit/" in path:
                return self._commit(path.split("/")[3:5], body)
            self._send(404, {"error": f"no route {path}"})

        def _create(self, payload):
            repo = f"{payload['organization']}/{payload['name']}"
            if payload["name"] == "refused":
                # A hub that echoes the credential it was given: the error must not show it.
                return self._send(400, {"error": f"token {TOKEN} may not create {repo}"})
            self._send(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": "0" * 24})

        def _preupload(self, payload):
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["size"] >= LFS_FROM_BYTES else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in payload["files"]
            ]
            self._send(200, {"files": files})

        def _lfs_batch(self, payload):
            objects = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}},
                }
                for o in payload["objects"]
            ]
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo, body):
            for line in body.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    hub.committed[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    hub.lfs_pointers[value["path"]] = value["oid"]
            url = f"{hub.url}/{'/'.join(repo)}/commit/{'1' * 40}"
            self._send(200, {"commitUrl": url, "commitOid": "1" * 40})

        def _record(self) -> bytes:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Recorded(self.command, self.path, headers, body))
            return body

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    hub = FakeHub(f"http://127.0.0.1:{server.server_port}")
    server.RequestHandlerClass = _handler(hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The client reads these once at import; the test session runs offline (conftest).
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield hub
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("hub") / "final"
    tiny_model.save_pretrained(folder)
    (folder / "README.md").write_text("# A tiny reranker\n", encoding="utf-8")
    return folder


def test_push_to_hub_sends_every_file(fake_hub, model_folder, caplog):
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(model_folder, "owner/tiny-reranker", token=TOKEN, private=True)

    assert url == f"{fake_hub.url}/owner/tiny-reranker/commit/{'1' * 40}"
    create = next(json.loads(r.body) for r in fake_hub.requests if r.path == "/api/repos/create")
    assert create["name"] == "tiny-reranker" and create["organization"] == "owner"
    assert create["visibility"] == "private"

    # Small files travel in the commit itself, the weights through LFS, byte for byte.
    weights = (model_folder / "model.safetensors").read_bytes()
    oid = hashlib.sha256(weights).hexdigest()
    assert fake_hub.lfs_pointers == {"model.safetensors": oid}
    assert fake_hub.lfs[oid] == weights
    for name in ("config.json", "README.md", "tokenizer.json", "tokenizer_config.json"):
        assert fake_hub.committed[name] == (model_folder / name).read_bytes()
    sent = set(fake_hub.committed) | set(fake_hub.lfs_pointers)
    assert sent == {p.name for p in model_folder.iterdir()}


def test_push_to_hub_token_only_in_authorization_header(fake_hub, model_folder, caplog):
    caplog.set_level(logging.DEBUG)
    push_to_hub(model_folder, "owner/tiny-reranker", token=TOKEN)

    # The hub API calls; the client also GETs an agent registry, which needs no credential.
    api_calls = [r for r in fake_hub.requests if r.method == "POST"]
    assert api_calls, "no request reached the fake hub"
    for request in fake_hub.requests:
        assert TOKEN.encode() not in request.body, request.path
        assert TOKEN not in request.path
        others = {k: v for k, v in request.headers.items() if k != "authorization"}
        assert TOKEN not in json.dumps(others), request.path
    for request in api_calls:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
    # The storage upload (a presigned URL on the real hub) gets no credential at all.
    uploads = [r for r in fake_hub.requests if r.path.startswith("/lfs-upload/")]
    assert uploads and all("authorization" not in r.headers for r in uploads)
    assert TOKEN not in caplog.text


def test_push_to_hub_error_is_scrubbed(fake_hub, model_folder):
    with pytest.raises(RuntimeError, match="failed") as raised:
        push_to_hub(model_folder, "owner/refused", token=TOKEN)

    printed = "".join(traceback.format_exception(raised.value))
    assert "may not create" in printed
    assert TOKEN not in printed


def test_push_to_hub_refuses_a_folder_with_a_token(fake_hub, model_folder, tmp_path):
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "config.json").write_text(json.dumps({"note": f"pushed with {TOKEN}"}))

    with pytest.raises(ValueError, match="hold a hub token"):
        push_to_hub(leaky, "owner/leaky", token=TOKEN)
    assert fake_hub.requests == []


def test_push_to_hub_bad_arguments(tmp_path, model_folder):
    with pytest.raises(FileNotFoundError, match="config.json"):
        push_to_hub(tmp_path, "owner/name", token=TOKEN)
    with pytest.raises(ValueError, match="owner/name"):
        push_to_hub(model_folder, "no-owner", token=TOKEN)


def test_app_push_handler_pushes_the_run_with_its_card(fake_hub, tiny_run, tmp_path, monkeypatch):
    import app

    # A copy: the handler rewrites final/README.md for the repository, and the run is shared.
    shutil.copytree(tiny_run, tmp_path / tiny_run.name)
    monkeypatch.setattr(app, "RUNS", tmp_path)
    note = app.push_to_hub(tiny_run.name, " owner/tiny-reranker ", f" {TOKEN} ", False)

    assert note.startswith("Pushed to ") and TOKEN not in note
    card = fake_hub.committed["README.md"].decode()
    assert 'CrossEncoder("owner/tiny-reranker")' in card
    assert "model.safetensors" in fake_hub.lfs_pointers
