"""Published checkpoints by name, against a loopback server speaking the Hub's download protocol.

`LoopbackHub` answers `HEAD/GET /{repo}/resolve/{revision}/{file}` as huggingface.co does: small
files with `X-Repo-Commit` and a git-blob `ETag`; large (LFS) files with a 302 to a storage host
(here `localhost` rather than `127.0.0.1`, so the client treats it as one: no token sent there)
carrying `X-Linked-Etag` / `X-Linked-Size`; renamed repos (`bert-base-uncased` →
`google-bert/bert-base-uncased`) with a relative 307; `X-Error-Code` on 404s. bertcli runs in a
subprocess, because huggingface_hub reads HF_HOME / HF_ENDPOINT / HF_HUB_OFFLINE at import.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from tests.conftest import VOCAB_DIR, WIKITEXT2, require

transformers = pytest.importorskip("transformers")

LFS = {"model.safetensors", "pytorch_model.bin", "tf_model.h5"}
TOKEN = "hf_loopback_token"
TEXT = "The quick brown fox jumps over the lazy dog near Manchester."


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LoopbackHub:
    """Serves repos {repo_id: {filename: bytes}} over the Hub's resolve protocol, recording calls."""

    def __init__(self, repos: dict[str, dict[str, bytes]], renamed: dict[str, str]):
        self.repos = repos
        self.renamed = renamed  # old name -> canonical repo id
        self.commits = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        self.blobs = {
            hashlib.sha256(data).hexdigest(): data
            for files in repos.values()
            for data in files.values()
        }
        self.requests: list[dict[str, str | None]] = []
        self.cut_next: set[str] = set()  # file names whose next GET is cut at 3/4
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self) -> list[str]:
        """The file names fetched with GET so far (storage-host GETs named by their file)."""
        return [r["file"] for r in self.requests if r["method"] == "GET"]

    def _answer(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(h.path.split("?")[0])
        record = {
            "method": h.command,
            "path": path,
            "range": h.headers.get("Range"),
            "auth": h.headers.get("Authorization"),
            "file": None,
        }
        self.requests.append(record)
        if path.startswith("/cdn/"):
            digest = path.rsplit("/", 1)[1]
            name = path.split("/")[2]
            record["file"] = name
            self._send(h, self.blobs[digest], {}, body, name)
            return
        if "/resolve/" not in path:
            h.send_response(404)
            h.end_headers()
            return
        repo, rest = path[1:].split("/resolve/", 1)
        revision, filename = rest.split("/", 1)
        record["file"] = filename
        if repo in self.renamed:  # the Hub keeps old names alive with a relative redirect
            h.send_response(307)
            h.send_header("Location", f"/{self.renamed[repo]}/resolve/{revision}/{filename}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if repo not in self.repos:
            return self._error(h, "RepoNotFound", {})
        commit = self.commits[repo]
        if revision not in ("main", commit):
            return self._error(h, "RevisionNotFound", {})
        headers = {"X-Repo-Commit": commit}
        if filename not in self.repos[repo]:
            return self._error(h, "EntryNotFound", headers)
        data = self.repos[repo][filename]
        if filename in LFS:  # large files live on a storage host, reached by a redirect
            digest = hashlib.sha256(data).hexdigest()
            h.send_response(302)
            h.send_header("Location", f"http://localhost:{self.port}/cdn/{filename}/{digest}")
            h.send_header("X-Repo-Commit", commit)
            h.send_header("ETag", f'"{_git_blob_sha1(data)}"')
            h.send_header("X-Linked-Etag", f'"{digest}"')
            h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        headers["ETag"] = f'"{_git_blob_sha1(data)}"'
        self._send(h, data, headers, body, filename)

    def _error(self, h, code: str, headers: dict[str, str]) -> None:
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _send(self, h, data: bytes, headers: dict[str, str], body: bool, name: str) -> None:
        start = 0
        if h.headers.get("Range"):
            start = int(h.headers["Range"].split("=")[1].split("-")[0])
        chunk = data[start:]
        h.send_response(206 if start else 200)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(chunk)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        if name in self.cut_next:  # a dropped connection halfway through the file
            self.cut_next.discard(name)
            h.wfile.write(chunk[: len(chunk) * 3 // 4])
            h.wfile.flush()
            h.connection.shutdown(2)
            return
        h.wfile.write(chunk)


def _tiny_bert(root: Path, hidden: int = 32, layers: int = 2) -> tuple[Path, dict[str, bytes]]:
    """A small transformers BERT with bert-base-uncased's real vocabulary and tokenizer files."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = transformers.BertForPreTraining(config)
    model.save_pretrained(root)
    # the tokenizer files as the published repo has them, made by `tokenizers` itself
    from tokenizers import BertWordPieceTokenizer

    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    BertWordPieceTokenizer(str(vocab), lowercase=True).save(str(root / "tokenizer.json"))
    (root / "vocab.txt").write_bytes(vocab.read_bytes())
    (root / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 512}')
    files = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    return root, files


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root, files = _tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    state = transformers.BertForPreTraining.from_pretrained(root).state_dict()
    bin_path = root.parent / "pytorch_model.bin"
    torch.save(state, bin_path)
    full = dict(files)
    full["pytorch_model.bin"] = bin_path.read_bytes()  # both formats, as on the real Hub
    full["tf_model.h5"] = os.urandom(1000)
    full["README.md"] = b"# tiny\n"
    bin_only = {k: v for k, v in files.items() if k not in LFS}
    bin_only["pytorch_model.bin"] = full["pytorch_model.bin"]
    for name in ("tokenizer.json", "special_tokens_map.json"):
        bin_only.pop(name, None)  # an older repo: vocab.txt and tokenizer_config.json only
    gpt2 = {"config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}).encode()}
    # over the client's 10 MiB read size, so a cut at 3/4 leaves whole chunks on disk to resume
    _, wide = _tiny_bert(tmp_path_factory.mktemp("wide-bert"), hidden=128, layers=1)
    server = LoopbackHub(
        {
            "google-bert/bert-base-uncased": full,
            "someone/old-bert": bin_only,
            "openai-community/gpt2": gpt2,
            "someone/wide-bert": wide,
        },
        renamed={"bert-base-uncased": "google-bert/bert-base-uncased"},
    )
    server.source = root
    yield server
    server.close()


def _env(tmp_path: Path, hub: LoopbackHub | None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and k != "XDG_CACHE_HOME"
    }
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN=TOKEN)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    env.update(extra)
    return env


def _bertcli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertcli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The error line: exactly one, last on stderr (after any progress lines), no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_download_by_name_then_transformers_finds_the_same_files_offline(hub, tmp_path):
    env = _env(tmp_path, hub)
    start = len(hub.requests)
    result = _bertcli(env, "download", "bert-base-uncased", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    commit = hub.commits["google-bert/bert-base-uncased"]
    snapshot = tmp_path / "hf" / "hub" / "models--bert-base-uncased" / "snapshots" / commit
    assert Path(summary["directory"]) == snapshot
    wanted = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json"]
    wanted.append("tokenizer_config.json")
    assert summary["files"] == wanted
    # only what a BERT checkpoint needs crossed the wire: no pytorch_model.bin, tf_model.h5 …
    assert sorted(hub.gets()[: len(wanted)]) == sorted(wanted) and len(hub.gets()) == len(wanted)
    for name in wanted:
        assert (snapshot / name).read_bytes() == hub.repos["google-bert/bert-base-uncased"][name]
    ours = hub.requests[start:]
    hub_calls = [r for r in ours if not r["path"].startswith("/cdn/")]
    assert hub_calls and all(r["auth"] == f"Bearer {TOKEN}" for r in hub_calls)  # HF_TOKEN
    assert all(r["auth"] is None for r in ours if r["path"].startswith("/cdn/"))

    # a second run finds everything cached: metadata checks only, no file is fetched again
    again = _bertcli(env, "download", "bert-base-uncased", "--json")
    assert again.returncode == 0, again.stderr
    assert len(hub.gets()) == len(wanted)

    # transformers, offline, resolves the name to the very files bertcli fetched
    before = len(hub.requests)
    script = (
        "import json, torch, transformers\n"
        "m = transformers.BertForPreTraining.from_pretrained('bert-base-uncased').eval()\n"
        "t = transformers.AutoTokenizer.from_pretrained('bert-base-uncased')\n"
        f"ids = t({TEXT!r}, return_tensors='pt')\n"
        "with torch.no_grad(): out = m(**ids)\n"
        "from transformers.utils import cached_file\n"
        "print(json.dumps({'ids': ids['input_ids'][0].tolist(), "
        "'logits': out.prediction_logits[0, :, :50].tolist(), "
        "'file': cached_file('bert-base-uncased', 'model.safetensors')}))\n"
    )
    offline = _env(tmp_path, None, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    run = subprocess.run(
        [sys.executable, "-c", script], env=offline, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(hub.requests) == before  # offline: not one request
    assert Path(seen["file"]).resolve() == (snapshot / "model.safetensors").resolve()

    reference = transformers.BertForPreTraining.from_pretrained(hub.source).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(hub.source)  # the repo's own files
    ids = ref_tok(TEXT, return_tensors="pt")
    assert seen["ids"] == ids["input_ids"][0].tolist()
    assert len(set(seen["ids"])) > 10 and 100 not in seen["ids"]  # real pieces, no [UNK]
    with torch.no_grad():
        expected = reference(**ids).prediction_logits[0, :, :50]
    torch.testing.assert_close(torch.tensor(seen["logits"]), expected, atol=1e-5, rtol=1e-5)

    # and bertcli's own loader reads the snapshot to the same outputs
    from bertcli.hf import load_pretrained

    ours_model = load_pretrained(snapshot).eval()
    with torch.no_grad():
        out = ours_model(ids["input_ids"], ids["token_type_ids"], ids["attention_mask"])
    torch.testing.assert_close(out.mlm_logits[0, :, :50], expected, atol=1e-4, rtol=1e-4)


def test_cut_transfer_resumes_into_hf_hub_cache(hub, tmp_path):
    cache = tmp_path / "elsewhere"
    env = _env(tmp_path, hub, HF_HUB_CACHE=str(cache))
    hub.cut_next.add("model.safetensors")
    start = len(hub.requests)
    result = _bertcli(env, "download", "someone/wide-bert")
    assert result.returncode == 0, result.stderr
    weights = hub.repos["someone/wide-bert"]["model.safetensors"]
    assert len(weights) > 12 << 20
    gets = [r for r in hub.requests[start:] if r["file"] == "model.safetensors"]
    gets = [r for r in gets if r["method"] == "GET"]
    assert len(gets) == 2 and gets[0]["range"] is None
    resumed_at = int(gets[1]["range"].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= len(weights) * 3 // 4  # resumed, not restarted
    commit = hub.commits["someone/wide-bert"]
    snapshot = cache / "models--someone--wide-bert" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "hf" / "hub").exists()  # HF_HUB_CACHE wins over HF_HOME
    blobs = cache / "models--someone--wide-bert" / "blobs"
    assert not [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]


def test_pytorch_bin_when_no_safetensors(hub, tmp_path):
    start = len(hub.requests)
    result = _bertcli(_env(tmp_path, hub), "download", "someone/old-bert", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == [
        "config.json",
        "pytorch_model.bin",
        "vocab.txt",
        "tokenizer_config.json",
    ]
    got = [r["file"] for r in hub.requests[start:] if r["method"] == "GET"]
    assert "model.safetensors" not in got
    from bertcli.hf import load_pretrained

    model = load_pretrained(Path(summary["directory"]))  # our loader reads the .bin
    assert model.config.hidden_size == 32


def test_bad_names_are_one_line(hub, tmp_path):
    env = _env(tmp_path, hub)
    line = _one_error_line(_bertcli(env, "download", "bert-base-uncassed"))
    assert "bert-base-uncased" in line and "wikitext2" in line  # lists the known names

    start = len(hub.requests)
    line = _one_error_line(_bertcli(env, "download", "openai-community/gpt2"))
    assert "model_type 'gpt2'" in line
    assert [r["file"] for r in hub.requests[start:]] == ["config.json", "config.json"]

    line = _one_error_line(_bertcli(env, "download", "nobody/missing-bert"))
    assert "nobody/missing-bert" in line and "no such model repo" in line

    line = _one_error_line(_bertcli(env, "download", "bert-base-uncased", "--out", "x"))
    assert "Hugging Face cache" in line


def test_offline_says_what_to_run(hub, tmp_path):
    start = len(hub.requests)
    offline = _env(tmp_path, hub, HF_HUB_OFFLINE="1")
    line = _one_error_line(_bertcli(offline, "download", "bert-base-cased"))
    assert "bertcli download bert-base-cased" in line and "HF_HUB_OFFLINE" in line
    assert len(hub.requests) == start


@pytest.mark.slow  # the client retries an unreachable Hub with backoff for about 23 s
def test_unreachable_hub_says_what_to_run(tmp_path):
    unreachable = _env(tmp_path, None, HF_ENDPOINT="http://127.0.0.1:9")
    line = _one_error_line(_bertcli(unreachable, "download", "bert-base-cased"))
    assert "cannot reach http://127.0.0.1:9" in line
    assert "bertcli download bert-base-cased" in line


def test_download_list_shows_corpora_and_models_with_sizes(tmp_path):
    result = _bertcli(_env(tmp_path, None), "download", "--list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["downloads"]}
    assert rows["wikitext2"]["kind"] == "corpus" and rows["wikitext2"]["size"]
    assert rows["bert-base-uncased"]["kind"] == "checkpoint"
    assert rows["bert-large-cased"]["size"].endswith("GB")


@pytest.mark.slow
def test_pretrain_init_from_name_downloads_and_brings_its_tokenizer(hub, tmp_path):
    text = tmp_path / "domain.txt"
    text.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:30_000])
    env = _env(tmp_path, hub)
    args = ["pretrain", "--data-text", "--train-data", text, "--init-from", "bert-base-uncased"]
    args += ["--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--no-nsp"]
    start = len(hub.gets())
    result = _bertcli(env, *args, "--max-seq-length", "32", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert len(hub.gets()) > start  # first use downloaded it
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt").read_text()
    assert (checkpoint / "vocab.txt").read_text() == vocab  # the repo's tokenizer came along
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "models--bert-base-uncased" in run["tokenizer"]

    # offline, the client's cache lookup finds the name (no request); sequences longer than
    # the checkpoint's 64 positions are then refused in one line
    before = len(hub.requests)
    offline = _env(tmp_path, hub, HF_HUB_OFFLINE="1")
    line = _one_error_line(
        _bertcli(offline, *args, "--max-seq-length", "128", "--out", tmp_path / "run2")
    )
    assert "--max-seq-length 128 exceeds max_position_embeddings 64 of bert-base-uncased" in line
    assert len(hub.requests) == before


def test_evaluate_checkpoint_by_name_equals_its_snapshot_dir(hub, tmp_path):
    """`evaluate --checkpoint NAME` fetches the checkpoint (first use) and scores exactly what
    evaluating the snapshot directory it landed in scores; an unknown name is one line."""
    text = tmp_path / "valid.txt"
    text.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:20_000])
    env = _env(tmp_path, hub)
    args = ["--data-text", text, "--max-seq-length", "32", "--max-batches", "2", "--json"]
    by_name = _bertcli(env, "evaluate", "--checkpoint", "bert-base-uncased", *args)
    assert by_name.returncode == 0, by_name.stderr
    snapshot = next((tmp_path / "hf" / "hub" / "models--bert-base-uncased").glob("snapshots/*"))
    by_dir = _bertcli(env, "evaluate", "--checkpoint", snapshot, *args)
    assert by_dir.returncode == 0, by_dir.stderr
    a, b = json.loads(by_name.stdout), json.loads(by_dir.stdout)
    assert a["mlm_loss"] == b["mlm_loss"] and a["mlm_loss"] > 0
    line = _one_error_line(_bertcli(env, "evaluate", "--checkpoint", "no-such-bert", *args))
    assert "--checkpoint no-such-bert: no such directory, and not a model name" in line


@pytest.mark.slow
def test_torchrun_downloads_once_on_rank_0(hub, tmp_path):
    text = tmp_path / "domain.txt"
    text.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:20_000])
    start = len(hub.requests)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", "-m", "bertcli", "pretrain", "--data-text", "--train-data", text]
    command += ["--init-from", "bert-base-uncased", "--max-steps", "1", "--batch-size", "2"]
    command += ["--max-seq-length", "32", "--no-nsp", "--device", "cpu", "--out", tmp_path / "run"]
    result = subprocess.run(
        [str(c) for c in command],
        env=_env(tmp_path, hub),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gets = [r["file"] for r in hub.requests[start:] if r["method"] == "GET"]
    # rank 0 fetched each file once; rank 1 waited and read the cache (not one request)
    assert sorted(gets) == sorted(
        ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]
    )
    heads = [r["file"] for r in hub.requests[start:] if r["method"] == "HEAD"]
    assert heads.count("config.json") == 2  # the name's redirect, then the canonical repo
    assert (tmp_path / "run" / "checkpoints" / "step_00000001" / "vocab.txt").is_file()


@pytest.mark.parametrize("name", ["a/b.git", "a/b--c", "a/-b", "a/b."])
def test_names_the_hub_would_reject_are_one_line(tmp_path, name):
    """huggingface_hub's HFValidationError used to escape cli.py as a traceback."""
    line = _one_error_line(_bertcli(_env(tmp_path, None), "download", name))
    assert line.startswith(f"error: unknown name '{name}'")


@pytest.mark.parametrize(
    "revision", ["../../../../tmp/evil", "/etc/passwd", "a/../b", ".hidden", "x.lock", "a b", "@"]
)
def test_revisions_that_are_no_git_ref_are_refused(tmp_path, revision):
    """The client writes `refs/<revision>` in the cache: a path, so `..` would leave it."""
    env = _env(tmp_path, None, HF_ENDPOINT="http://127.0.0.1:9")
    line = _one_error_line(_bertcli(env, "download", "someone/bert", "--revision", revision))
    assert line.startswith("error: --revision") and "git branch/tag" in line
    assert not (tmp_path / "tmp").exists()


def test_git_refs_and_commits_are_accepted_revisions():
    from bertcli.hub import check_revision

    for revision in ("main", "v1.0", "refs/pr/1", "feature/x-y_z", "a" * 40):
        check_revision(revision)


def test_plain_http_endpoint_warns(monkeypatch):
    from bertcli import hub
    from bertcli.console import Reporter
    from bertcli.errors import UserError

    lines: list[str] = []

    class Log(Reporter):
        def log(self, message: str) -> None:
            lines.append(message)

    def stop(*args, **kwargs):
        raise UserError("stopped before the network")

    monkeypatch.setattr(hub, "_endpoint", lambda: "http://hub-mirror.example")
    monkeypatch.setattr(hub, "_get", stop)
    with pytest.raises(UserError, match="stopped"):
        hub.fetch_model("someone/bert", reporter=Log())
    assert lines == [
        "warning: HF_ENDPOINT http://hub-mirror.example is plain http, not https: the transfer "
        "is not private"
    ]
