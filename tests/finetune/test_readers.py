"""Readers on the real downstream files and on every GLUE task's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertcli.config import FinetuneConfig
from bertcli.console import Reporter
from bertcli.finetune import data as fdata
from bertcli.finetune.run import load_task_data
from bertcli.finetune.tasks import GLUE, get_task
from bertcli.model import IGNORE_INDEX
from bertcli.tokenizer import load_tokenizer
from tests.conftest import SHARED, require

DOWN = SHARED / "downstream"


def test_real_sst2_and_mrpc_with_its_bom():
    sst2 = get_task("sst2")
    train = fdata.read_examples(require(DOWN / "sst2" / "train.tsv"), fdata.task_columns(sst2), "t")
    dev = fdata.read_examples(DOWN / "sst2" / "dev.tsv", fdata.task_columns(sst2), "t")
    assert (len(train), len(dev)) == (67349, 872)
    assert sum(e.label == "0" for e in dev) == 428 and dev[0].line == 2
    mrpc = get_task("mrpc")
    path = require(DOWN / "mrpc" / "train.tsv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rows = fdata.read_examples(path, fdata.task_columns(mrpc), "t")
    assert len(rows) == 3667 and {e.label for e in rows} == {"0", "1"}
    assert rows[0].pair and rows[0].text != rows[0].pair
    # by header name, too: the BOM must not stick to the first column's name
    named = fdata.read_examples(path, fdata.Columns("#1 String", "#2 String", "Quality"), "t")
    assert [(e.text, e.label) for e in named[:5]] == [(e.text, e.label) for e in rows[:5]]


def test_real_wnut17_with_tab_only_breaks(tokenizer_dir):
    counts = {}
    for name in ("train", "dev", "test"):
        sentences = fdata.read_conll(require(DOWN / "wnut17" / f"{name}.conll"), "t")
        counts[name] = (len(sentences), sum(len(s.tokens) for s in sentences))
    assert counts == {"train": (3394, 62730), "dev": (1009, 15733), "test": (1287, 23394)}
    tags = {t for s in fdata.read_conll(DOWN / "wnut17" / "train.conll", "t") for t in s.tags}
    assert len(tags) == 13


def test_windows_lose_no_word(tokenizer_dir):
    """Sentences longer than --max-seq-length are split; every word keeps one labelled token."""
    tok = load_tokenizer(tokenizer_dir)
    sentences = fdata.read_conll(require(DOWN / "wnut17" / "dev.conll"), "t")[:60]
    tags = [[i % 3 for i, _ in enumerate(s.tokens)] for s in sentences]
    windows = fdata.encode_sentences(tok, sentences, tags, 16)
    assert len(windows) > len(sentences)  # some were split
    seen = {}
    for w in windows:
        assert len(w["input_ids"]) <= 16
        labelled = [i for i, t in enumerate(w["labels"]) if t != IGNORE_INDEX]
        assert labelled == w["starts"]
        for offset, position in enumerate(w["starts"]):
            seen[(w["sentence"], w["first_word"] + offset)] = w["labels"][position]
    expected = {(i, j): t for i, s in enumerate(tags) for j, t in enumerate(s)}
    assert seen == expected


GLUE_FILES = {
    "cola": (
        None,
        ["gj04\t1\t\tOur friends won't buy this analysis.", "gj04\t0\t*\tThey drank the pub."],
    ),
    "sst2": ("sentence\tlabel", ['a "quoted" gem \t1', "dull , flat \t0"]),
    "mrpc": (
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        ["1\t1\t2\tHe said.\tHe says.", "0\t3\t4\tA b.\tC d."],
    ),
    "stsb": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        [
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t5.000",
            "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man.\tA cat.\t0.600",
        ],
    ),
    "qqp": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        ["1\t2\t3\tWhy?\tHow?\t0", "4\t5\t6\tWho?\tWho is?\t1"],
    ),
    "mnli": (
        "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1"
        "\tgold_label",
        [
            "0\t1\t1e\tgov\t(\t(\t(\t(\tIt rains.\tIt is wet.\tentailment\tentailment",
            "1\t2\t2n\tgov\t(\t(\t(\t(\tIt rains.\tIt is dry.\tcontradiction\tcontradiction",
        ],
    ),
    "qnli": (
        "index\tquestion\tsentence\tlabel",
        ["0\tWhat?\tThis.\tentailment", "1\tWho?\tThat.\tnot_entailment"],
    ),
    "rte": (
        "index\tsentence1\tsentence2\tlabel",
        ["0\tA man runs.\tA man moves.\tentailment", "1\tX.\tY.\tnot_entailment"],
    ),
    "wnli": (
        "index\tsentence1\tsentence2\tlabel",
        ["0\tI put the cake in.\tThe cake is in.\t1", "1\tA.\tB.\t0"],
    ),
}
EXPECTED = {  # (text, pair, label) of the first row, as transformers' GLUE processors read it
    "cola": ("Our friends won't buy this analysis.", None, "1"),
    "sst2": ('a "quoted" gem ', None, "1"),
    "mrpc": ("He said.", "He says.", "1"),
    "stsb": ("A plane.", "An air plane.", "5.000"),
    "qqp": ("Why?", "How?", "0"),
    "mnli": ("It rains.", "It is wet.", "entailment"),
    "qnli": ("What?", "This.", "entailment"),
    "rte": ("A man runs.", "A man moves.", "entailment"),
    "wnli": ("I put the cake in.", "The cake is in.", "1"),
}


def _write_glue(root: Path, name: str) -> Path:
    header, rows = GLUE_FILES[name]
    text = "\n".join(([header] if header else []) + rows) + "\n"
    task = GLUE[name]
    root.mkdir(parents=True, exist_ok=True)
    for file in (task.train_file, *task.eval_files):
        (root / file).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("name", sorted(GLUE))
def test_every_glue_layout(tmp_path, tokenizer_dir, name):
    root = _write_glue(tmp_path / name, name)
    config = FinetuneConfig(init_from="x", task=name, out=tmp_path / "o", data_dir=root)
    data = load_task_data(config, GLUE[name], load_tokenizer(tokenizer_dir), Reporter())
    first = data.evals[0].items[0]
    assert (first.text, first.pair, first.label) == EXPECTED[name]
    assert len(data.evals) == (2 if name == "mnli" else 1)
    assert [e.suffix for e in data.evals] == (["", "_mm"] if name == "mnli" else [""])
    if name == "stsb":
        assert data.train[0]["label"] == 5.0 and data.regression
    else:
        assert data.labels == list(GLUE[name].labels)
        assert data.train[0]["label"] == data.labels.index(EXPECTED[name][2])
    has_pair = EXPECTED[name][1] is not None
    assert (1 in data.train[0]["token_type_ids"]) == has_pair


def test_generic_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('id,review,stars\n1,"good, really",pos\n2,"bad\nand long",neg\n')
    rows = fdata.read_examples(csv_file, fdata.Columns("review", None, "stars"), "t")
    assert [(e.text, e.label, e.line) for e in rows] == [
        ("good, really", "pos", 2),
        ("bad\nand long", "neg", 3),
    ]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    rows = fdata.read_examples(jsonl, fdata.Columns(None, None, None), "t")
    assert [(e.text, e.label, e.line) for e in rows] == [("a", "1", 1), ("b", "0", 3)]
    headerless = tmp_path / "h.tsv"
    headerless.write_text("x\tfirst\t0\ny\tsecond\t1\n")
    rows = fdata.read_examples(headerless, fdata.Columns("1", None, "2", header=False), "t")
    assert [(e.text, e.label) for e in rows] == [("first", "0"), ("second", "1")]


def test_tokenizer_padding_and_truncation_are_switched_off(tokenizer_dir, tmp_path):
    """sentence-transformers' tokenizer.json pads every text to 128 (all-MiniLM-L6-v2 does):
    fine-tuning must see the real tokens only."""
    from bertcli.finetune.run import finetune_tokenizer

    padded = load_tokenizer(tokenizer_dir)
    padded.tokenizer.enable_padding(length=128, pad_id=padded.pad_id, pad_token="[PAD]")
    padded.tokenizer.enable_truncation(max_length=128)
    (tmp_path / "tok").mkdir()
    padded.tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    tok = finetune_tokenizer(None, tmp_path / "tok", "x")
    examples = [fdata.Example("a short text", None, "0", 2)]
    features = fdata.encode_examples(tok, examples, [0], 64)
    reference = fdata.encode_examples(load_tokenizer(tokenizer_dir), examples, [0], 64)
    assert features == reference and len(features[0]["input_ids"]) < 10
