"""The model card: a pure function of run.json and the metrics, read back by huggingface_hub.

The front matter is parsed with huggingface_hub's own `ModelCard` / `metadata_load` (what the
Hub runs), the model-index is compared with the metrics it was made from, and a change in
run.json shows in the card. A pretrain run's card is checked end to end on a real run.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from huggingface_hub import ModelCard, metadata_load

from bertcli.modelcard import render_model_card, run_metrics, write_model_card
from tests.conftest import WIKITEXT2, require

RUN = {
    "bertcli_version": "0.1.0",
    "torch_version": "2.13.0",
    "tokenizers_version": "0.23.3",
    "device": "cuda:0",
    "precision": "bf16",
    "world_size": 2,
    "device_names": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"],
    "parameters": 110_000_000,
    "command": ["bertcli", "pretrain", "--data-text", "--train-data", "corpus/pubmed.txt"],
    "base_model": "bert-base-uncased",  # --init-from by published name
    "train_files": ["corpus/pubmed.txt"],
    "eval_files": ["corpus/held-out.txt"],
    "train_sources": None,
    "corpus": {
        "train_files": [{"path": "corpus/pubmed.txt", "bytes": 2_500_000_000}],
        "eval_files": [{"path": "corpus/held-out.txt", "bytes": 1_000_000}],
        "train_tokens": 543_210_000,
        "train_documents": 1_234_567,
        "eval_tokens": 210_000,
    },
    "tokenizer": "tok/pubmed-extended",
    "tokenizer_extension": {
        "base": {"source": "bert-base-uncased", "vocab_sha256": "ab" * 32, "vocab_size": 30522},
        "added": 1500,
        "slots": 994,
    },
    "config": {
        "out": "outputs/pubmed-bert",
        "init_from": "bert-base-uncased",
        "max_seq_length": 128,
        "license": "apache-2.0",
        "language": ["en"],
        "push_to": None,
        "train": {
            "optimizer": "lamb",
            "lr": 0.002,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-6,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "lr_policy": "poly",
            "warmup_ratio": 0.01,
            "warmup_steps": None,
            "min_lr": 0.0,
            "batch_size": 256,
            "batches_per_step": 4,
            "nsp": True,
        },
    },
    "model_config": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "vocab_size": 31522,
        "max_position_embeddings": 512,
    },
    "result": {
        "steps": 10_000,
        "global_batch": 2048,
        "sequences_seen": 20_480_000,
        "token_positions_seen": 2_621_440_000,
        "warmup_steps": 100,
        "wall_time_s": 12_345.6,
    },
}
METRICS = {
    "train": {"step": 10_000, "loss": 1.9, "mlm_loss": 1.6, "nsp_loss": 0.3},
    "eval": {
        "step": 10_000,
        "split": "eval",
        "mlm_loss": 1.7,
        "mlm_accuracy": 0.66,
        "perplexity": math.exp(1.7),
        "nsp_loss": 0.2,
        "nsp_accuracy": 0.91,
        "num_sequences": 500,
        "num_masked_tokens": 9000,
    },
}
RESULTS = {  # issue 20's results.json, by hand
    "task": "mrpc",
    "metric": "f1",
    "eval": {"accuracy": 0.81, "f1": 0.87},
    "runs": [
        {"seed": s, "eval": {"accuracy": a, "f1": f}, "train_time_s": 60.0, "examples_per_s": 60}
        for s, a, f in ((1, 0.80, 0.86), (2, 0.81, 0.87), (3, 0.83, 0.88))
    ],
    "num_train": 3668,
    "num_eval": 408,
    "labels": ["0", "1"],
}


def _card(tmp_path, run=RUN, metrics=METRICS, **options) -> tuple[ModelCard, str]:
    path = write_model_card(tmp_path, run, metrics, **options)
    return ModelCard.load(path), path.read_text()


def test_front_matter_parses_and_says_what_the_hub_needs(tmp_path):
    card, text = _card(tmp_path)
    meta = metadata_load(tmp_path / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "fill-mask"
    assert {"bert", "bertcli"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]  # from run.json
    assert meta["base_model"] == "bert-base-uncased"  # a published name
    results = {r.metric_name: r for r in card.data.eval_results}
    assert results["MLM accuracy"].metric_value == METRICS["eval"]["mlm_accuracy"]
    assert results["MLM accuracy"].metric_type == "accuracy"
    assert results["MLM perplexity"].metric_value == pytest.approx(math.exp(1.7))
    assert results["NSP accuracy"].metric_value == 0.91
    assert {r.task_type for r in results.values()} == {"fill-mask"}
    assert {r.dataset_name for r in results.values()} == {"held-out.txt"}
    assert text.startswith("---\n")


def test_body_is_made_of_run_json(tmp_path):
    _, text = _card(tmp_path)
    for fact in (
        "bertcli pretrain --data-text --train-data corpus/pubmed.txt",  # the command line
        "`pubmed.txt` | 2.5 GB",
        "543,210,000 tokens in 1,234,567 documents",
        "It extends bert-base-uncased (size 30522) with 1500 domain pieces (994 in its",
        "| optimizer steps | 10,000 |",
        "| global batch | 2048 sequences (256 per device x 4 accumulated x 2 processes) |",
        "| tokens seen | 2,621,440,000 positions",
        "| optimizer | lamb (betas 0.9, 0.999",
        "| schedule | poly, peak LR 0.002, 100 warmup steps |",
        "| precision | bf16 |",
        "| world size | 2 (2 x NVIDIA H100 80GB HBM3) |",
        "| wall time | 3h 25m 46s |",
        "| final training loss (step 10000) | loss 1.9000, mlm_loss 1.6000, nsp_loss 0.3000 |",
        "| MLM accuracy | 0.6600 |",
        "continued from [bert-base-uncased]",
        'BertForMaskedLM.from_pretrained("path/to/this/directory")',
        "## Limitations",
        "Inputs longer than 512 tokens",
    ):
        assert fact in text, fact


def test_changing_run_json_changes_the_card(tmp_path):
    run = copy.deepcopy(RUN)
    run["config"]["train"]["optimizer"] = "adamw"
    run["world_size"] = 1
    run["device_names"] = ["CPU (Intel Xeon)"]
    run["config"]["init_from"] = "outputs/local-run"  # a path, not a published name
    run["base_model"] = None
    run["config"]["license"] = None
    run["config"]["language"] = []
    run["tokenizer_extension"] = None  # a tokenizer without extension.json
    (tmp_path / "a").mkdir()
    card, text = _card(tmp_path / "a", run=run, repo_id="me/pubmed-bert")
    assert "| optimizer | adamw" in text and "| world size | 1 (CPU (Intel Xeon)) |" in text
    assert card.data.base_model is None and "continued from" not in text
    assert card.data.license is None and card.data.language is None
    assert "It extends" not in text
    assert 'from_pretrained("me/pubmed-bert")' in text and "# me/pubmed-bert" in text
    # the options win over the run's own
    (tmp_path / "b").mkdir()
    card, _ = _card(tmp_path / "b", license="mit", language=["en", "fr"])
    assert card.data.license == "mit" and card.data.language == ["en", "fr"]


def test_no_eval_no_model_index(tmp_path):
    card, text = _card(tmp_path, metrics={"train": METRICS["train"], "eval": None})
    assert card.data.eval_results is None and "model-index" not in text
    assert "No held-out evaluation was run" in text


def test_a_no_nsp_run_reports_no_nsp_score(tmp_path):
    run = copy.deepcopy(RUN)
    run["config"]["train"]["nsp"] = False
    card, text = _card(tmp_path, run=run)
    assert "NSP accuracy" not in {r.metric_name for r in card.data.eval_results}
    assert "masked-LM loss" in text and "next-sentence" not in text


def test_finetune_branch_from_results_json(tmp_path):
    run = {"bertcli_version": "0.1.0", "config": {"out": "ft/mrpc", "max_seq_length": 128}}
    card, text = _card(tmp_path, run=run, metrics=None, task_results=RESULTS)
    assert card.data.pipeline_tag == "text-classification"
    assert {"bert", "bertcli", "mrpc"} <= set(card.data.tags)
    scores = {r.metric_name: (r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert scores == {"accuracy": ("accuracy", 0.81), "f1": ("f1", 0.87)}
    assert {r.dataset_name for r in card.data.eval_results} == {"mrpc"}
    assert "median of 3 seeds" in text and "| f1 | 0.8700 |" in text
    assert "| seeds | 1, 2, 3 |" in text and "3668 / 408" in text
    assert "BertForSequenceClassification.from_pretrained" in text
    ner = dict(RESULTS, task="ner", eval={"precision": 0.5, "recall": 0.4, "f1": 0.44})
    card = ModelCard(render_model_card(run, None, task_results=ner))
    assert card.data.pipeline_tag == "token-classification"
    assert "BertForTokenClassification" in card.text


def test_finetune_run_json_as_finetune_writes_it(tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--bert-base-uncased" / "snapshots" / "abc123"
    run = {  # the fields of finetune's run.json (issue 20)
        "bertcli_version": "0.1.0",
        "precision": "fp32",
        "world_size": 1,
        "device": "cpu",
        "init_from": str(snapshot),
        "train_file": "glue/MRPC/train.tsv",
        "eval_files": ["glue/MRPC/dev.tsv"],
        "config": {
            "init_from": "bert-base-uncased",
            "task": "mrpc",
            "out": "ft/mrpc",
            "max_seq_length": 128,
            "lr": 2e-5,
            "num_epochs": 3,
            "batch_size": 32,
            "batches_per_step": 1,
            "optimizer": "adamw",
            "lr_policy": "warmup-annealing",
            "warmup_ratio": 0.1,
        },
        "model_config": {"num_hidden_layers": 12, "max_position_embeddings": 512},
    }
    card, text = _card(tmp_path, run=run, metrics=None, task_results=RESULTS)
    assert card.data.base_model == "bert-base-uncased"  # resolved into the HF cache
    assert "| epochs | 3 |" in text and "| optimizer | adamw" in text
    assert "| schedule | warmup-annealing, peak LR 2e-05, warmup 0.1 |" in text
    assert "It knows only what `train.tsv` holds" in text
    local = dict(run, init_from="runs/pretrained/checkpoints/step_00001000")
    local["config"] = dict(run["config"], init_from="runs/pretrained")
    assert ModelCard(render_model_card(local, None, task_results=RESULTS)).data.base_model is None


def test_mnli_matched_and_mismatched_are_two_splits():
    mnli = dict(RESULTS, task="mnli", eval={"matched": {"accuracy": 0.8},
                                            "mismatched": {"accuracy": 0.79}})  # fmt: skip
    card = ModelCard(render_model_card({}, None, task_results=mnli))
    found = {(r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert found == {("matched", "accuracy", 0.8), ("mismatched", "accuracy", 0.79)}
    assert "| accuracy (matched) | 0.8000 |" in card.text


def test_run_metrics_reads_the_last_rows_up_to_a_step(tmp_path):
    rows = [
        {"step": 1, "loss": 9.0},
        {"step": 2, "loss": 8.0},
        {"step": 2, "split": "eval", "mlm_accuracy": 0.1},
        {"step": 3, "loss": 7.0},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo'  # a cut last line
    (tmp_path / "metrics.jsonl").write_text(text)
    assert run_metrics(tmp_path) == {"train": rows[3], "eval": rows[2]}
    assert run_metrics(tmp_path, step=1) == {"train": rows[0], "eval": None}


def test_pretrain_writes_the_card_into_its_final_checkpoint(tmp_path, invoke):
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (tmp_path / "train.txt").write_text(text[:40_000])
    (tmp_path / "valid.txt").write_text(text[200_000:210_000])
    args = ["pretrain", "--data-text", "--train-data", tmp_path / "train.txt"]
    args += ["--eval-data", tmp_path / "valid.txt", "--out", tmp_path / "run"]
    args += ["--preset", "tiny", "--hidden-size", "32", "--num-attention-heads", "2"]
    args += ["--intermediate-size", "64", "--max-seq-length", "32", "--batch-size", "4"]
    args += ["--vocab-size", "1000", "--max-steps", "2", "--log-every", "1", "--device", "cpu"]
    args += ["--language", "en", "--language", "de", "--license", "cc-by-4.0"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    final = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert summary["model_card"] == str(final / "README.md")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["command"][:2] == ["bertcli", "pretrain"] and "--license" in run["command"]
    assert run["corpus"]["train_files"][0]["bytes"] == (tmp_path / "train.txt").stat().st_size
    assert run["corpus"]["train_tokens"] > 1000 and run["device_names"][0].startswith("CPU")
    assert run["result"]["steps"] == 2 and run["result"]["sequences_seen"] == 8
    assert run["result"]["wall_time_s"] > 0
    card = ModelCard.load(final / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.language == ["en", "de"]
    evals = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert evals["MLM accuracy"] == summary["eval"]["mlm_accuracy"]
    assert evals["MLM perplexity"] == summary["eval"]["perplexity"]
    assert f"loss {summary['train']['loss']:.4f}" in card.text
    # the same function over the same files gives the same card: nothing typed by hand
    again = render_model_card(run, run_metrics(tmp_path / "run"))
    assert again == (final / "README.md").read_text()
    # a --resume with nothing left to train rewrites run.json and the card, metrics kept
    resumed = invoke(*args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    card = ModelCard.load(final / "README.md")
    assert "--resume" in card.text and card.data.eval_results
    assert f"final training loss (step 2) | loss {summary['train']['loss']:.4f}" in card.text


def test_run_json_summarises_the_tokenizers_extension(tmp_path):
    from bertcli.pretrain import _tokenizer_extension
    from bertcli.tokenizer import BertTokenizer

    record = {  # build-tokenizer --extend's extension.json (format 1), cut to what is read
        "format": 1,
        "base": {"source": "bert-base-uncased", "vocab_sha256": "ab" * 32, "vocab_size": 30522},
        "vocab_size": 30524,
        "pieces": [
            {"piece": "immuno", "id": 1, "slot": 1, "count": 9},
            {"piece": "##histo", "id": 2, "slot": 2, "count": 8},
            {"piece": "##chemistry", "id": 30522, "slot": None, "count": 7},
        ],
    }
    (tmp_path / "extension.json").write_text(json.dumps(record))
    tok = BertTokenizer.__new__(BertTokenizer)
    tok.path = tmp_path
    summary = _tokenizer_extension(tok)
    assert summary == {"base": record["base"], "added": 3, "slots": 2, "vocab_size": 30524}
    run = dict(RUN, tokenizer_extension=summary)
    assert "extends bert-base-uncased (size 30522) with 3 domain pieces (2 in its" in (
        render_model_card(run, METRICS)
    )
    (tmp_path / "extension.json").unlink()
    assert _tokenizer_extension(tok) is None  # a plain tokenizer: nothing to say


@pytest.mark.parametrize(
    "option, expected",
    [
        (["--license", "Apache 2.0"], "--license 'Apache 2.0': give the Hub's license id"),
        (["--language", "English"], "--language 'English': give an ISO 639 code"),
    ],
)
def test_card_options_are_checked_before_training(invoke, tmp_path, option, expected):
    args = ["pretrain", "--data-text", "--preset", "tiny", "--max-steps", "1", "--device", "cpu"]
    result = invoke(*args, "--out", tmp_path / "run", *option)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.stderr
    assert not (tmp_path / "run").exists()
