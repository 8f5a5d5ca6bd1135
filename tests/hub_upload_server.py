"""A loopback Hub that also takes uploads, as huggingface_hub's `create_repo` / `upload_folder`
speak to huggingface.co (read in huggingface_hub's `hf_api.py`, `_commit_api.py`, `lfs.py`):

- `POST /api/repos/create` (`{"name", "organization", "type", "visibility"}`): 200 with the URL,
  409 when the repo exists (the client's `exist_ok` swallows it);
- `POST /api/models/{repo}/preupload/{rev}`: each file's `uploadMode`, `lfs` for weight files
  (by extension, as the Hub's `.gitattributes` says) and for anything over 10 MB;
- `POST /{repo}.git/info/lfs/objects/batch`: git-lfs batch answers with a basic-transfer `upload`
  action (a PUT to a storage host, `localhost`, no token) and a `verify` action; a blob the
  server already holds gets no actions;
- `POST /api/models/{repo}/commit/{rev}`: the NDJSON commit (`header`, `file` base64, `lfsFile`
  by sha256, `deletedFile`), answered with `commitUrl` / `commitOid`;
- `POST /api/models/{repo}/branch/{name}` and `GET /api/{type}s/{repo}` (repo_info / exists).

Xet storage is not spoken: the tests set `HF_HUB_DISABLE_XET=1`, so the client takes its LFS path
(with hf_xet installed and a real Hub, the same `upload_folder` call uploads through Xet).

What it stores is served back by `LoopbackHub`'s download protocol (`tests/test_hub.py`): the
same `repos` / `commits` / `blobs`, so `bertcli download` and `from_pretrained` read the very
bytes uploaded. Tokens: `tokens` maps each token to the namespaces it may write (`*` = any);
an unknown token is a 401, writing outside its namespaces a 403.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any
from urllib.parse import unquote

from tests.test_hub import LoopbackHub

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their name


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class UploadHub(LoopbackHub):
    """`LoopbackHub` plus the upload side; `calls` records every upload-side request."""

    def __init__(
        self,
        tokens: dict[str, set[str]],
        other_types: dict[str, str] | None = None,
        repos: dict[str, dict[str, bytes]] | None = None,
    ):
        super().__init__(repos or {}, renamed={})
        self.tokens = tokens
        self.other_types = dict(other_types or {})  # repo id -> "dataset" / "space"
        self.private: dict[str, bool] = {}
        self.branches: dict[tuple[str, str], dict[str, bytes]] = {}
        self.branch_commits: dict[tuple[str, str], str] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}  # repo -> commits (header + paths)
        self.uploaded: dict[str, bytes] = {}  # LFS blobs PUT to the storage host, by sha256
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        hub = self
        base = self.httpd.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_GET(self):
                if self.path.startswith("/api/"):
                    hub._api_get(self)
                else:
                    super().do_GET()

            def do_POST(self):
                hub._post(self)

            def do_PUT(self):
                hub._put(self)

        self.httpd.RequestHandlerClass = Handler

    # ---- plumbing --------------------------------------------------------------------------

    def _body(self, h) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    h.rfile.readline()
                    return data
                data += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _json(self, h, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _deny(self, h, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(h, status, {"error": message}, headers)

    def _token(self, h) -> str | None:
        auth = h.headers.get("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _may_write(self, h, repo_id: str) -> bool:
        """401 for no or an unknown token, 403 outside its namespaces; True when allowed."""
        token = self._token(h)
        if token not in self.tokens:
            self._deny(h, 401, "Invalid credentials in Authorization header")
            return False
        allowed = self.tokens[token]
        if "*" not in allowed and repo_id.split("/")[0] not in allowed:
            self._deny(h, 403, f"You don't have the rights to create or write to {repo_id}")
            return False
        return True

    def _record(self, h, kind: str, **extra: Any) -> dict[str, Any]:
        call = {"kind": kind, "method": h.command, "path": unquote(h.path.split("?")[0])}
        call["auth"] = h.headers.get("Authorization")
        call.update(extra)
        self.calls.append(call)
        return call

    @staticmethod
    def _split(path: str, marker: str) -> tuple[str, str]:
        """`/api/models/{repo}/{marker}/{rest}` -> (repo, rest); a repo id has one slash."""
        repo, rest = path[len("/api/models/") :].split(f"/{marker}/", 1)
        return repo, rest

    # ---- GET /api/{type}s/{repo}: repo_info, repo_exists ------------------------------------

    def _api_get(self, h) -> None:
        path = unquote(h.path.split("?")[0])
        self._record(h, "info")
        if path.startswith("/api/models/") and "/tree/" in path:
            return self._tree(h, *self._split(path, "tree"))
        for kind in ("model", "dataset", "space"):
            prefix = f"/api/{kind}s/"
            if path.startswith(prefix):
                repo = path[len(prefix) :]
                exists = repo in self.repos if kind == "model" else (
                    self.other_types.get(repo) == kind
                )  # fmt: skip
                if not exists:
                    return self._deny(h, 404, "Repository not found", "RepoNotFound")
                sha = self.commits.get(repo, hashlib.sha1(repo.encode()).hexdigest())
                return self._json(h, 200, {"id": repo, "sha": sha, "private": False})
        self._deny(h, 404, "not found")

    def _tree(self, h, repo: str, rest: str) -> None:
        """`list_repo_tree` (transformers asks for `additional_chat_templates/`): the files
        under a folder, or EntryNotFound as the Hub answers for a folder that is not there."""
        revision, _, folder = rest.partition("/")
        files = self._files_at(repo, revision) if repo in self.repos else None
        if files is None:
            return self._deny(h, 404, "Repository not found", "RepoNotFound")
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
            for name, data in sorted(files.items())
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        ]
        if folder and not entries:
            return self._deny(h, 404, f"{folder} does not exist", "EntryNotFound")
        self._json(h, 200, entries)

    # ---- POST ------------------------------------------------------------------------------

    def _post(self, h) -> None:
        path = unquote(h.path.split("?")[0])
        body = self._body(h)
        with self.lock:
            if path == "/api/repos/create":
                return self._create(h, json.loads(body))
            if path == "/api/validate-yaml":
                return self._validate_yaml(h, json.loads(body))
            if path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(h, path[1 : -len(".git/info/lfs/objects/batch")], body)
            if path.endswith(".git/info/lfs/objects/verify"):
                return self._lfs_verify(h, json.loads(body))
            if path.startswith("/api/models/") and "/preupload/" in path:
                return self._preupload(h, *self._split(path, "preupload"), json.loads(body))
            if path.startswith("/api/models/") and "/commit/" in path:
                return self._commit(h, *self._split(path, "commit"), body)
            if path.startswith("/api/models/") and "/branch/" in path:
                return self._branch(h, *self._split(path, "branch"))
        self._record(h, "unknown")
        self._deny(h, 404, f"no such endpoint {path}")

    def _create(self, h, payload: dict[str, Any]) -> None:
        name, org = payload["name"], payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        self._record(h, "create", repo=repo_id, payload=payload)
        if not self._may_write(h, repo_id):
            return
        if payload.get("type", "model") != "model":
            return self._deny(h, 400, "this server holds model repos only")
        url = f"{self.url}/{repo_id}"
        if repo_id in self.other_types:  # the name is taken by a repo of another type
            kind = self.other_types[repo_id]
            message = f"You already created a {kind} repo with that name"
            return self._json(h, 409, {"error": message, "url": f"{self.url}/{kind}s/{repo_id}"},
                              {"X-Error-Message": message})  # fmt: skip
        if repo_id in self.repos:  # the client's exist_ok reads the url from this answer
            message = "You already created this model repo"
            return self._json(h, 409, {"error": message, "url": url}, {"X-Error-Message": message})
        self.repos[repo_id] = {}
        self.commits[repo_id] = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
        self.private[repo_id] = payload.get("visibility") == "private" or bool(
            payload.get("private")
        )
        self.history[repo_id] = []
        self._json(h, 200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, h, payload: dict[str, Any]) -> None:
        """The Hub checks a README's front matter before the commit: here, that it is a YAML
        mapping whose `model-index` huggingface_hub itself parses back."""
        from huggingface_hub.repocard_data import model_index_to_eval_results

        self._record(h, "validate-yaml", content=payload.get("content"))
        import yaml

        content = payload.get("content") or ""
        errors = []
        if content.startswith("---\n"):
            try:
                meta = yaml.safe_load(content[4:].split("\n---\n", 1)[0])
                if not isinstance(meta, dict):
                    errors.append("the metadata is not a mapping")
                elif "model-index" in meta:
                    model_index_to_eval_results(meta["model-index"])
            except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
                errors.append(f"invalid metadata: {exc}")
        if errors:
            return self._json(h, 400, {"errors": [{"message": e} for e in errors]})
        self._json(h, 200, {"warnings": []})

    def _files_at(self, repo: str, revision: str) -> dict[str, bytes] | None:
        if revision in ("main", self.commits.get(repo)):
            return self.repos.get(repo)
        return self.branches.get((repo, revision))

    def _preupload(self, h, repo: str, revision: str, payload: dict[str, Any]) -> None:
        self._record(h, "preupload", repo=repo, revision=revision)
        if repo not in self.repos:
            return self._deny(h, 404, "Repository not found", "RepoNotFound")
        if not self._may_write(h, repo):
            return
        current = self._files_at(repo, revision)
        if current is None:
            return self._deny(h, 404, "Revision not found", "RevisionNotFound")
        answers = []
        for entry in payload["files"]:
            lfs = entry["path"].endswith(LFS_SUFFIXES) or entry["size"] >= LFS_MIN_SIZE
            old = current.get(entry["path"])
            answers.append(
                {
                    "path": entry["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": None if old is None else hashlib.sha256(old).hexdigest(),
                }
            )
        self._json(h, 200, {"files": answers, "commitOid": self.commits[repo]})

    def _lfs_batch(self, h, repo: str, body: bytes) -> None:
        payload = json.loads(body)
        self._record(h, "lfs-batch", repo=repo, objects=payload.get("objects"))
        if repo not in self.repos:
            return self._deny(h, 404, "Repository not found", "RepoNotFound")
        if not self._may_write(h, repo):
            return
        objects = []
        for obj in payload["objects"]:
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.uploaded:  # a blob already stored needs no upload
                answer["actions"] = {
                    # the storage host by another name, as S3 is: the client sends no token there
                    "upload": {"href": f"http://localhost:{self.port}/lfs-storage/{obj['oid']}"},
                    "verify": {
                        "href": f"{self.url}/{repo}.git/info/lfs/objects/verify",
                        "header": {"Authorization": h.headers.get("Authorization", "")},
                    },
                }
            objects.append(answer)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/vnd.git-lfs+json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _lfs_verify(self, h, payload: dict[str, Any]) -> None:
        self._record(h, "lfs-verify", oid=payload.get("oid"))
        data = self.uploaded.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            return self._deny(h, 404, "object not found")
        self._json(h, 200, {"success": True})

    def _put(self, h) -> None:
        path = unquote(h.path.split("?")[0])
        data = self._body(h)
        call = self._record(h, "lfs-put", size=len(data))
        if not path.startswith("/lfs-storage/"):
            return self._deny(h, 404, "no such endpoint")
        oid = path.rsplit("/", 1)[1]
        call["oid"] = oid
        if hashlib.sha256(data).hexdigest() != oid:
            return self._deny(h, 400, "content does not match its sha256")
        with self.lock:
            self.uploaded[oid] = data
        h.send_response(200)
        h.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _commit(self, h, repo: str, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        call = self._record(h, "commit", repo=repo, revision=revision, lines=lines)
        call["content_type"] = h.headers.get("Content-Type")
        if repo not in self.repos:
            return self._deny(h, 404, "Repository not found", "RepoNotFound")
        if not self._may_write(h, repo):
            return
        current = self._files_at(repo, revision)
        if current is None:
            return self._deny(h, 404, "Revision not found", "RevisionNotFound")
        files = dict(current)
        header: dict[str, Any] = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "header":
                header = value
            elif line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.uploaded:
                    return self._deny(h, 422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.uploaded[value["oid"]]
            elif line["key"] in ("deletedFile", "deletedFolder"):
                files = {k: v for k, v in files.items() if not k.startswith(value["path"])}
        parent = self.commits[repo] if revision == "main" else self.branch_commits[
            (repo, revision)
        ]  # fmt: skip
        oid = hashlib.sha1(
            (parent + json.dumps(sorted((k, hashlib.sha256(v).hexdigest())
                                        for k, v in files.items()))).encode()
        ).hexdigest()  # fmt: skip
        for data in files.values():  # what the download side serves LFS files from
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        if revision in ("main", self.commits[repo]):
            self.repos[repo].clear()
            self.repos[repo].update(files)
            self.commits[repo] = oid
        else:
            self.branches[(repo, revision)] = files
            self.branch_commits[(repo, revision)] = oid
        self.history[repo].append(
            {"oid": oid, "revision": revision, "header": header, "files": sorted(files)}
        )
        self._json(
            h,
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.url}/{repo}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )

    def _branch(self, h, repo: str, branch: str) -> None:
        self._record(h, "branch", repo=repo, branch=branch)
        if repo not in self.repos:
            return self._deny(h, 404, "Repository not found", "RepoNotFound")
        if not self._may_write(h, repo):
            return
        if (repo, branch) in self.branches:
            return self._deny(h, 409, "Reference already exists")
        self.branches[(repo, branch)] = dict(self.repos[repo])
        self.branch_commits[(repo, branch)] = self.commits[repo]
        self._json(h, 200, {})
