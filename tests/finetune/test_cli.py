"""`bertcli finetune` end to end on a tiny checkpoint, and bad input as one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from bertcli.finetune.run import sample_dir
from bertcli.hf import build_task_model

transformers = pytest.importorskip("transformers")  # the reference

FAST = ["--num-epochs", "1", "--batch-size", "16", "--max-seq-length", "32", "--device", "cpu"]


def _sst2_small(tmp_path):
    """100 training rows and 40 dev rows of the bundled sample."""
    root = tmp_path / "sst2"
    root.mkdir()
    for name, rows in (("train.tsv", 101), ("dev.tsv", 41)):
        lines = (sample_dir() / name).read_text(encoding="utf-8").splitlines()[:rows]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_sst2_seeds_json_and_model_loads_in_transformers(invoke, checkpoint, tmp_path):
    out = tmp_path / "run"
    data = _sst2_small(tmp_path)
    result = invoke(
        "finetune",
        "--init-from",
        checkpoint,
        "--task",
        "sst2",
        "--data-dir",
        data,
        "--out",
        out,
        "--seeds",
        "2",
        "--json",
        *FAST,
        "--lr",
        "1e-3",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the only thing on stdout
    on_disk = json.loads((out / "results.json").read_text())
    assert summary["eval"] == on_disk["eval"]
    assert set(on_disk) >= {"task", "metric", "eval", "runs", "num_train", "num_eval", "labels"}
    assert on_disk["task"] == "sst2" and on_disk["metric"] == "accuracy"
    assert [r["seed"] for r in on_disk["runs"]] == [42, 43]
    assert (on_disk["num_train"], on_disk["num_eval"], on_disk["labels"]) == (100, 40, ["0", "1"])
    accuracies = [r["eval"]["accuracy"] for r in on_disk["runs"]]
    assert on_disk["eval"]["accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert all(r["train_time_s"] > 0 and r["examples_per_s"] > 0 for r in on_disk["runs"])
    assert not (out / "seeds").exists()  # no --keep-all-seeds

    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(40))
    assert {r["label"] for r in rows} <= {"0", "1"} and {r["prediction"] for r in rows} <= {
        "0",
        "1",
    }
    median_seed = on_disk["median_seed"]
    median_run = next(r for r in on_disk["runs"] if r["seed"] == median_seed)
    correct = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert correct == pytest.approx(median_run["eval"]["accuracy"])

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for m in metrics if m.get("split") == "eval") == 2  # one per epoch per seed
    assert (out / "tensorboard").is_dir() and (out / "run.json").is_file()

    # model/ loads in transformers unchanged; its logits equal bertcli's on the eval data
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"}
    assert config["problem_type"] == "single_label_classification"
    theirs = transformers.BertForSequenceClassification.from_pretrained(out / "model").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out / "model")
    ours = build_task_model(out / "model", "sequence", 2, keep_classifier=True).eval()
    texts = [line.split("\t")[0] for line in (data / "dev.tsv").read_text().splitlines()[1:]]
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        ref = theirs(**batch).logits
        got = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    predicted = [config["id2label"][str(i)] for i in ref.argmax(-1).tolist()]
    assert predicted == [r["prediction"] for r in rows]


def test_ner_keep_all_seeds_and_token_model(invoke, checkpoint, ner_files, tmp_path):
    train, dev = ner_files
    out = tmp_path / "ner"
    result = invoke(
        "finetune",
        "--init-from",
        checkpoint,
        "--task",
        "ner",
        "--train-data",
        train,
        "--eval-data",
        dev,
        "--out",
        out,
        "--seeds",
        "2",
        "--keep-all-seeds",
        "--lr",
        "5e-3",
        "--num-epochs",
        "2",
        "--batch-size",
        "4",
        "--max-seq-length",
        "8",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "f1" and set(results["eval"]) == {"f1", "precision", "recall"}
    assert results["labels"] == sorted(
        ["O", "B-person", "B-location", "I-location", "B-corporation"]
    )
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert [len(r["predictions"]) for r in rows] == [len(r["tokens"]) for r in rows] == [3, 4]
    assert rows[1]["labels"] == ["B-location", "I-location", "O", "B-person"]
    assert sorted(p.name for p in (out / "seeds").iterdir()) == ["seed-42", "seed-43"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    theirs = transformers.BertForTokenClassification.from_pretrained(out / "model")
    assert theirs.config.num_labels == 5


def test_quickstart_sample_when_no_data(invoke, checkpoint, tmp_path):
    result = invoke(
        "finetune",
        "--init-from",
        checkpoint,
        "--task",
        "sst2",
        "--out",
        tmp_path / "q",
        *FAST,
        "--batch-size",
        "64",
    )
    assert result.exit_code == 0, result.output
    assert "small SST-2 sample in the package" in result.output
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert (results["num_train"], results["num_eval"]) == (400, 200)


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="no torchrun",
)
def test_torchrun_two_processes(checkpoint, tmp_path):
    data = _sst2_small(tmp_path)
    out = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "bertcli",
        "finetune",
        "--init-from",
        str(checkpoint),
        "--task",
        "sst2",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--json",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0's summary only
    results = json.loads((out / "results.json").read_text())
    assert results["num_train"] == 100 and (out / "model" / "model.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2


def _fails(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def _run(invoke, checkpoint, tmp_path, *args):
    return invoke("finetune", "--init-from", checkpoint, "--out", tmp_path / "o", *FAST, *args)


def test_bad_columns_labels_and_files(invoke, checkpoint, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\ngood\tpos\nbad\tneg\n")
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\nfine\tpos\nmeh\tmeh-ish\n")
    base = ("--task", "classification", "--train-data", train)
    _fails(_run(invoke, checkpoint, tmp_path, *base, "--eval-data", dev), "'meh-ish'", "dev.tsv:3")
    _fails(
        _run(invoke, checkpoint, tmp_path, *base, "--eval-data", train, "--label-column", "y"),
        "--label-column 'y'",
        "no such column",
        "text, label",
    )
    _fails(
        _run(invoke, checkpoint, tmp_path, *base, "--eval-data", train, "--text-column", "7"),
        "no column 7",
    )
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    _fails(_run(invoke, checkpoint, tmp_path, *base, "--eval-data", empty), "empty file")
    binary = tmp_path / "bin.tsv"
    binary.write_bytes(b"text\tlabel\n\x00\x01\x02\tpos\n")
    _fails(_run(invoke, checkpoint, tmp_path, *base, "--eval-data", binary), "binary data")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes(b"text\tlabel\ncaf\xe9\tpos\n")
    _fails(_run(invoke, checkpoint, tmp_path, *base, "--eval-data", latin), "latin.tsv:2", "UTF-8")
    _fails(_run(invoke, checkpoint, tmp_path, "--task", "mrpc"), "--task mrpc", "--data-dir")
    _fails(
        _run(invoke, checkpoint, tmp_path, "--task", "ner", "--train-data", train), "--eval-data"
    )


def test_bad_ner_tag(invoke, checkpoint, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Obama\tB-person\nvisited\tX-thing\n")
    _fails(
        _run(
            invoke, checkpoint, tmp_path, "--task", "ner", "--train-data", bad, "--eval-data", bad
        ),
        "bad.conll:2",
        "'X-thing'",
    )


def test_vocab_mismatch(invoke, checkpoint, tmp_path):
    other = tmp_path / "other-tok"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    _fails(
        _run(invoke, checkpoint, tmp_path, "--task", "sst2", "--tokenizer", other),
        "tokenizer has 6 tokens",
        "vocab_size",
    )


def test_out_holding_another_run(invoke, checkpoint, tmp_path):
    from bertcli.train.rundir import write_run_marker

    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("{}")  # not bertcli's: never written into
    _fails(_run(invoke, checkpoint, tmp_path, "--task", "sst2"), "not a bertcli run directory")
    assert (out / "results.json").read_text() == "{}"
    write_run_marker(out, "finetune")  # an earlier finetune's directory
    _fails(_run(invoke, checkpoint, tmp_path, "--task", "sst2"), "already holds a run")
    (out / "results.json").unlink()
    write_run_marker(out, "pretrain")
    _fails(_run(invoke, checkpoint, tmp_path, "--task", "sst2"), "holds a pretrain run")
