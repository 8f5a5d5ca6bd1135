"""`bertcli push` and `pretrain --push-to`, against a loopback Hub that takes uploads.

The server (`tests/hub_upload_server.py`) speaks the upload protocol as huggingface_hub uses it
and serves what it stored through `LoopbackHub`'s download protocol, so the round trip —
push, then `bertcli download` and `transformers.from_pretrained` by repo id — is checked byte
for byte. bertcli and transformers run in subprocesses: huggingface_hub reads HF_ENDPOINT,
HF_TOKEN and HF_HUB_OFFLINE at import.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WIKITEXT2, require
from tests.hub_upload_server import UploadHub
from tests.test_hub import _bertcli, _env, _one_error_line

transformers = pytest.importorskip("transformers")

WRITER = "hf_writer_token"  # may write under someone/
READER = "hf_reader_token"  # may write nowhere
PUSHED = {
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
}
TEXT = "The tower was built in the nineteenth century by the city council."


@pytest.fixture(scope="module")
def hub():
    server = UploadHub(
        tokens={WRITER: {"someone"}, READER: set()},
        other_types={"someone/a-dataset": "dataset"},
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def trained(hub, tmp_path_factory):
    """A tiny run that checkpoints at steps 3 and 6 and pushes its final model on the way out."""
    root = tmp_path_factory.mktemp("pushed-run")
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (root / "train.txt").write_text(text[:60_000])
    (root / "valid.txt").write_text(text[200_000:215_000])
    env = _env(root, hub, HF_TOKEN=WRITER, HF_HUB_DISABLE_XET="1")
    args = ["pretrain", "--data-text", "--train-data", root / "train.txt"]
    args += ["--eval-data", root / "valid.txt", "--out", root / "run", "--vocab-size", "2000"]
    args += ["--preset", "tiny", "--hidden-size", "64", "--num-attention-heads", "2"]
    args += ["--intermediate-size", "128", "--max-seq-length", "64", "--batch-size", "8"]
    args += ["--max-steps", "6", "--save-every", "3", "--keep-last", "0", "--log-every", "1"]
    args += ["--device", "cpu"]
    args += ["--license", "mit", "--language", "en", "--push-to", "someone/pretrained"]
    result = _bertcli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    return root, Path(summary["checkpoint"]), summary


def _push_env(tmp_path: Path, hub: UploadHub, **extra: str) -> dict[str, str]:
    return _env(tmp_path, hub, HF_TOKEN=WRITER, HF_HUB_DISABLE_XET="1", **extra)


def test_pretrain_push_to_round_trips_byte_identical(hub, trained, tmp_path):
    root, final, summary = trained
    stored = hub.repos["someone/pretrained"]
    assert set(stored) == PUSHED  # no trainer_state.pt / .json, no tensorboard
    for name in PUSHED:
        assert stored[name] == (final / name).read_bytes(), name
    commit = hub.history["someone/pretrained"][-1]
    assert summary["pushed"] == f"{hub.url}/someone/pretrained/commit/{commit['oid']}"
    # the weights went through LFS (batch, PUT to storage without a token, verify), the small
    # files inline in the NDJSON commit, which names the weights by sha256
    weights = (final / "model.safetensors").read_bytes()
    oid = hashlib.sha256(weights).hexdigest()
    puts = [c for c in hub.calls if c["kind"] == "lfs-put" and c.get("oid") == oid]
    assert puts and puts[0]["auth"] is None and puts[0]["size"] == len(weights)
    assert any(c["kind"] == "lfs-verify" and c["oid"] == oid for c in hub.calls)
    commits = [c for c in hub.calls if c["kind"] == "commit" and c["repo"] == "someone/pretrained"]
    lines = commits[-1]["lines"]
    assert commits[-1]["content_type"] == "application/x-ndjson"
    assert lines[0]["key"] == "header"
    by_key = {line["value"]["path"]: line for line in lines[1:]}
    assert by_key["model.safetensors"]["key"] == "lfsFile"
    assert by_key["model.safetensors"]["value"]["oid"] == oid
    assert by_key["config.json"]["key"] == "file"
    decoded = base64.b64decode(by_key["config.json"]["value"]["content"])
    assert decoded == (final / "config.json").read_bytes()
    # the card names the repo in its usage code, and comes from the run
    card = stored["README.md"].decode()
    assert 'from_pretrained("someone/pretrained")' in card and "license: mit" in card

    # bertcli download by repo id gets the same bytes back
    env = _push_env(tmp_path, hub)
    got = _bertcli(env, "download", "someone/pretrained", "--json")
    assert got.returncode == 0, got.stderr
    snapshot = Path(json.loads(got.stdout)["directory"])
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
        assert (snapshot / name).read_bytes() == (final / name).read_bytes(), name

    # and transformers, by repo id over HF_ENDPOINT, scores like the local checkpoint
    script = (
        "import json, sys, torch, transformers\n"
        "src = sys.argv[1]\n"
        "m = transformers.BertForMaskedLM.from_pretrained(src).eval()\n"
        "t = transformers.AutoTokenizer.from_pretrained(src)\n"
        f"ids = t({TEXT!r}, return_tensors='pt')\n"
        "with torch.no_grad(): out = m(**ids).logits\n"
        "print(json.dumps({'ids': ids['input_ids'][0].tolist(), 'logits': out[0].tolist()}))\n"
    )
    seen = []
    for source in ("someone/pretrained", str(final)):
        run = subprocess.run(
            [sys.executable, "-c", script, source],
            env=_env(tmp_path / "tf", hub, HF_TOKEN=WRITER),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        seen.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert seen[0]["ids"] == seen[1]["ids"] and len(seen[0]["ids"]) > 5
    assert seen[0]["logits"] == seen[1]["logits"]  # the same bytes: the same numbers


def test_push_a_run_dir_prints_its_commit_url(hub, trained, tmp_path):
    root, final, _ = trained
    env = _push_env(tmp_path, hub)
    result = _bertcli(env, "push", root / "run", "someone/second", "--private", "--json")
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)  # --json: one object on stdout
    commit = hub.history["someone/second"][-1]
    assert pushed["commit_url"] == f"{hub.url}/someone/second/commit/{commit['oid']}"
    assert pushed["directory"] == str(final) and set(pushed["files"]) == PUSHED
    assert hub.private["someone/second"] is True
    assert set(hub.repos["someone/second"]) == PUSHED
    # a second push of the same files is a new commit on the existing repo (exist_ok)
    again = _bertcli(env, "push", final, "someone/second", "--message", "again")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{hub.url}/someone/second/commit/{hub.commits['someone/second']}"
    assert hub.history["someone/second"][-1]["header"]["summary"] == "again"
    # the weights were stored already: the LFS batch asked for no second upload
    oid = hashlib.sha256((final / "model.safetensors").read_bytes()).hexdigest()
    assert len([c for c in hub.calls if c["kind"] == "lfs-put" and c.get("oid") == oid]) == 1


def test_push_an_earlier_checkpoint_to_a_branch_with_its_state(hub, trained, tmp_path):
    root, _, _ = trained
    step3 = root / "run" / "checkpoints" / "step_00000003"
    assert not (step3 / "README.md").exists()  # only the final checkpoint has a card
    env = _push_env(tmp_path, hub)
    main = hub.commits["someone/pretrained"], dict(hub.repos["someone/pretrained"])
    args = ["push", step3, "someone/pretrained", "--revision", "step3"]
    result = _bertcli(env, *args, "--include-trainer-state", "--message", "step 3")
    assert result.returncode == 0, result.stderr
    branch = hub.branches[("someone/pretrained", "step3")]
    assert set(branch) == PUSHED | {"trainer_state.pt", "trainer_state.json"}
    assert branch["trainer_state.pt"] == (step3 / "trainer_state.pt").read_bytes()
    assert hub.history["someone/pretrained"][-1]["revision"] == "step3"
    assert (hub.commits["someone/pretrained"], hub.repos["someone/pretrained"]) == main
    assert branch["model.safetensors"] == (step3 / "model.safetensors").read_bytes()
    assert branch["model.safetensors"] != main[1]["model.safetensors"]  # step 3, not step 6
    # its card was made on the way, from run.json and the metrics up to step 3
    from huggingface_hub import ModelCard

    card = ModelCard(branch["README.md"].decode())
    assert card.data.license == "mit"
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    loss_at_3 = next(r["loss"] for r in rows if r["step"] == 3 and r.get("split") != "eval")
    assert f"final training loss (step 3) | loss {loss_at_3:.4f}" in card.text
    assert "| optimizer steps | 3 |" in card.text


def test_push_a_finetune_output_uses_its_model_dir(hub, trained, tmp_path):
    _, final, _ = trained
    out = tmp_path / "ft"
    model = out / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
        (model / name).write_bytes((final / name).read_bytes())
    (model / "pytorch_model.bin").write_bytes(b"the same weights, older format")  # not both
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out").write_bytes(b"logs")
    results = {
        "task": "ner",
        "metric": "f1",
        "eval": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3},
        "runs": [{"seed": 1, "eval": {"f1": 1 / 3}, "train_time_s": 3.0, "examples_per_s": 9.0}],
        "num_train": 100,
        "num_eval": 20,
        "labels": ["O", "B-location", "I-location"],
    }
    (out / "results.json").write_text(json.dumps(results))
    result = _bertcli(_push_env(tmp_path, hub), "push", out, "someone/tagger", "--json")
    assert result.returncode == 0, result.stderr
    stored = hub.repos["someone/tagger"]
    assert set(stored) == {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
                           "README.md"}  # fmt: skip
    from huggingface_hub import ModelCard

    card = ModelCard(stored["README.md"].decode())
    assert card.data.pipeline_tag == "token-classification"
    scores = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert scores == pytest.approx(results["eval"])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-token", "no Hugging Face token; run `hf auth login` or set HF_TOKEN"),
        ("bad-token", "the Hub rejected the token (HTTP 401)"),
        ("read-only", "the token may not write there (HTTP 403)"),
        ("other-type", "it is a dataset repo on the Hub, not a model repo"),
        ("offline", "HF_HUB_OFFLINE is set"),
        ("unreachable", "cannot reach http://127.0.0.1:9"),
        ("not-a-checkpoint", "is not a checkpoint"),
        ("bad-id", "not a valid Hub repo id"),
    ],
)
def test_push_errors_are_one_line(hub, trained, tmp_path, case, expected):
    root, final, _ = trained
    env = _push_env(tmp_path, hub)
    repo, path = "someone/errors", final
    if case == "no-token":
        env.pop("HF_TOKEN")
    elif case == "bad-token":
        env["HF_TOKEN"] = "hf_not_a_token"
    elif case == "read-only":
        env["HF_TOKEN"] = READER
    elif case == "other-type":
        repo = "someone/a-dataset"
    elif case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif case == "unreachable":
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    elif case == "not-a-checkpoint":
        path = root
    elif case == "bad-id":
        repo = "someone/../x"
    before = len(hub.history.get(repo, []))
    line = _one_error_line(_bertcli(env, "push", path, repo))
    assert expected in line, line
    assert len(hub.history.get(repo, [])) == before  # nothing committed


def test_pretrain_push_to_without_a_token_stops_before_training(tmp_path):
    env = _env(tmp_path, None)
    env.pop("HF_TOKEN")
    args = ["pretrain", "--data-text", "--preset", "tiny", "--max-steps", "1", "--device", "cpu"]
    result = _bertcli(env, *args, "--out", tmp_path / "run", "--push-to", "someone/x")
    assert "no Hugging Face token" in _one_error_line(result)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_continue_from_the_pushed_model_names_it_as_base_model(hub, trained, tmp_path):
    root, _, _ = trained
    env = _push_env(tmp_path, hub)
    args = ["pretrain", "--data-text", "--train-data", root / "train.txt", "--out", tmp_path / "r"]
    args += ["--init-from", "someone/pretrained", "--max-seq-length", "64", "--batch-size", "4"]
    args += ["--max-steps", "1", "--device", "cpu", "--json"]
    result = _bertcli(env, *args)
    assert result.returncode == 0, result.stderr
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(json.loads(result.stdout)["checkpoint"]) / "README.md")
    assert card.data.base_model == "someone/pretrained"
    assert "continued from [someone/pretrained]" in card.text
    assert not [c for c in hub.calls if c["kind"] == "unknown"]  # every call was understood


def test_finetune_push_to_publishes_model_dir_with_its_card(hub, trained, tmp_path):
    _, final, _ = trained
    out = tmp_path / "sst2"
    args = ["finetune", "--init-from", final, "--task", "sst2", "--out", out, "--device", "cpu"]
    args += ["--num-epochs", "1", "--max-seq-length", "32", "--license", "mit"]
    args += ["--push-to", "someone/sentiment", "--json"]
    result = _bertcli(_push_env(tmp_path, hub), *args)  # the bundled SST-2 sample
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["pushed"].startswith(hub.url)
    stored = hub.repos["someone/sentiment"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)
    assert stored["README.md"] == (out / "model" / "README.md").read_bytes()
    from huggingface_hub import ModelCard

    card = ModelCard(stored["README.md"].decode())
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "mit"
    scores = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert scores["accuracy"] == pytest.approx(summary["eval"]["accuracy"])
    assert "model_card" not in json.loads((out / "results.json").read_text())


def test_finetune_push_to_without_a_token_stops_before_training(tmp_path, trained):
    _, final, _ = trained
    env = _env(tmp_path, None)
    env.pop("HF_TOKEN")
    out = tmp_path / "ft"
    result = _bertcli(env, "finetune", "--init-from", final, "--task", "sst2", "--out", out,
                      "--push-to", "someone/x", "--device", "cpu")  # fmt: skip
    assert "no Hugging Face token" in _one_error_line(result)
    assert not (out / "model").exists()  # refused before any training
