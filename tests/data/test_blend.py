"""Several shard directories as one dataset: parsing DIR:WEIGHT, per-epoch sampling, padding of
masked_lm_positions, bad input, and exact resume of a blended pretrain run."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from bertcli.data.blend import BlendedDataset, apportion, open_shard_data, parse_source
from bertcli.data.datasets import collate
from bertcli.data.shards import ShardArrays, write_shard
from bertcli.errors import UserError
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import load_tokenizer
from bertcli.train.trainer import Trainer
from tests.train.conftest import TINY, corpus, tokenizer_dir  # noqa: F401 (fixtures)


def make_dir(root, tag: int, shard_rows: list[int], seq: int = 16, pred: int = 3):
    """Shards whose example k (in directory order) has input_ids[1] = tag * 1000 + k."""
    root.mkdir(parents=True)
    gen = np.random.default_rng(tag)
    k = 0
    for s, n in enumerate(shard_rows):
        ids = gen.integers(5, 900, (n, seq)).astype(np.int32)
        ids[:, 1] = tag * 1000 + np.arange(k, k + n)
        k += n
        positions = np.sort(gen.choice(np.arange(2, seq), (n, pred)), axis=1).astype(np.int32)
        write_shard(
            root / f"training_{s:05d}.hdf5",
            ShardArrays(
                input_ids=ids,
                input_mask=np.ones((n, seq), np.int8),
                segment_ids=np.zeros((n, seq), np.int8),
                masked_lm_positions=positions,
                masked_lm_ids=gen.integers(5, 900, (n, pred)).astype(np.int32),
                next_sentence_labels=np.zeros(n, np.int8),
            ),
            compression=None,
        )
    return root


def drawn(data, order) -> list[tuple[int, int]]:
    """(directory tag, example number) of each index, read through __getitem__."""
    return [divmod(int(data[int(i)]["input_ids"][1]), 1000) for i in order]


def test_parse_source():
    assert parse_source("a/b:0.25") == parse_source("a/b:2.5e-1")
    assert parse_source("a/b:3").weight == 3.0 and str(parse_source("a/b:3").path) == "a/b"
    assert parse_source("a/b").weight is None
    for bad in ("abc", "0", "-1", "inf", "nan", ""):
        with pytest.raises(UserError, match=f"weight '{bad}' is not a positive number"):
            parse_source(f"a/b:{bad}")


def test_existing_path_with_colon_is_taken_whole(tmp_path):
    make_dir(tmp_path / "x:2", 1, [5])
    assert parse_source(tmp_path / "x:2").weight is None
    assert len(open_shard_data([tmp_path / "x:2"])) == 5


def test_apportion_by_hand():
    assert apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
    # 3.5 / 1.75 / 1.75 -> floors 3, 1, 1; the two largest remainders (.75) get the last two
    assert apportion(7, [0.5, 0.25, 0.25]).tolist() == [3, 2, 2]
    assert apportion(100, [3, 1]).tolist() == [75, 25]


def test_unweighted_epoch_reads_every_example_once(tmp_path):
    a = make_dir(tmp_path / "a", 1, [7, 5])
    b = make_dir(tmp_path / "b", 2, [4])
    data = open_shard_data([a, b], seed=3)
    assert isinstance(data, BlendedDataset) and len(data) == 16
    order = data.order(0)
    assert sorted(order.tolist()) == list(range(16))
    assert sorted(drawn(data, order)) == [(1, k) for k in range(12)] + [(2, k) for k in range(4)]
    again = open_shard_data([a, b], seed=3)
    assert np.array_equal(again.order(0), order) and np.array_equal(again.order(5), data.order(5))
    assert not np.array_equal(data.order(1), order)
    first = data.order(0)
    first[:] = 0  # a caller's copy: changing it changes nothing inside
    assert np.array_equal(data.order(0), again.order(0))
    assert data.order(0, shuffle=False).tolist() == list(range(16))


def test_weights_set_each_directorys_share(tmp_path):
    a = make_dir(tmp_path / "a", 1, [30, 30])  # 60 examples
    b = make_dir(tmp_path / "b", 2, [8])  # 8 examples, asked for 3/4 of the epoch
    data = open_shard_data([f"{a}:1", f"{b}:3"], seed=0)
    assert len(data) == 68 and data.counts.tolist() == [17, 51]  # 68/4 and 3*68/4
    for epoch in range(3):
        picks = drawn(data, data.order(epoch))
        assert len(picks) == 68
        from_b = [k for tag, k in picks if tag == 2]
        assert len(from_b) == 51
        counts = Counter(from_b)  # 51 = 6 passes over 8 + 3: nothing used 8 times or twice short
        assert sorted(counts.values()) == [6] * 5 + [7] * 3
        from_a = [k for tag, k in picks if tag == 1]
        assert len(from_a) == len(set(from_a)) == 17  # a part pass: without replacement
        # each pass over b is complete before the next starts: in b's draw order, passes are
        # the consecutive runs of 8
        draws_b = data.draws(1, epoch)
        for p in range(6):
            assert sorted(draws_b[8 * p : 8 * p + 8].tolist()) == list(range(8))
    # the mix is interleaved, not one directory after the other
    labels = [tag for tag, _ in drawn(data, data.order(0)[:20])]
    assert 1 in labels and 2 in labels


def test_positions_padded_to_the_widest_directory(tmp_path):
    a = make_dir(tmp_path / "a", 1, [6], pred=5)
    b = make_dir(tmp_path / "b", 2, [6], pred=2)
    data = open_shard_data([a, b])
    batch = collate([data[i] for i in range(12)])
    assert batch["masked_lm_positions"].shape == (12, 5)
    narrow = batch["masked_lm_positions"][6:]
    assert (narrow[:, 2:] == 0).all() and (narrow[:, :2] >= 2).all()
    for row in range(12):  # the labels sit exactly at the listed positions
        labelled = (batch["masked_lm_labels"][row] != -100).nonzero().flatten()
        listed = batch["masked_lm_positions"][row]
        assert labelled.tolist() == sorted(set(listed[listed > 0].tolist()))


def test_bad_input_is_one_line(tmp_path):
    a = make_dir(tmp_path / "a", 1, [4])
    b = make_dir(tmp_path / "b", 2, [4], seq=32)
    cases = [
        ([a, b], rf"{a} holds 16-token sequences but {b} holds 32-token"),
        ([a, a], f"{a} is listed twice"),
        ([f"{a}:1", f"{tmp_path}/./a:2"], "listed twice"),
        ([f"{a}:1", b], "give a weight to every directory"),
        ([f"{a}:x"], "weight 'x' is not a positive number"),
    ]
    for values, message in cases:
        with pytest.raises(UserError, match=message):
            open_shard_data(values)
    with pytest.raises(UserError, match="apply to --train-data only"):
        open_shard_data([f"{a}:1"], flag="--eval-data", weights=False)


def test_cli_bad_weight_and_duplicate(invoke, tokenizer_dir, tmp_path):  # noqa: F811
    a = make_dir(tmp_path / "a", 1, [4])
    for values, message in (([f"{a}:-2"], "is not a positive number"), ([a, a], "listed twice")):
        args = ["pretrain", "--data-preprocessed", "--tokenizer", tokenizer_dir, *TINY]
        args += ["--out", tmp_path / "o", "--max-steps", "1"]
        for value in values:
            args += ["--train-data", value]
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output
        assert result.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def two_dirs(corpus, tokenizer_dir, tmp_path_factory):  # noqa: F811 (fixtures above)
    root = tmp_path_factory.mktemp("blend")
    text = (corpus / "train.txt").read_text()
    tok = load_tokenizer(tokenizer_dir)
    dirs = []
    for name, part in (("a", text[:9000]), ("b", text[9000:14000])):
        (root / f"{name}.txt").write_text(part)
        result = preprocess(
            PreprocessConfig(
                [root / f"{name}.txt"], root / name, max_seq_length=64, dupe_factor=1, workers=1
            ),
            tok,
        )
        dirs.append(result.directory)
    return dirs


@pytest.mark.slow
def test_blended_pretrain_resumes_exactly(
    invoke,
    two_dirs,
    tokenizer_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Two weighted directories, across epoch ends, killed at step 7 and resumed: the losses are
    the uninterrupted run's, and run.json records the directories and weights used."""
    a, b = two_dirs
    sizes = [len(open_shard_data([d])) for d in two_dirs]
    assert 16 <= sum(sizes) <= 80  # several epochs in 12 steps of 8

    def args(out, *extra):
        return [
            "pretrain", "--data-preprocessed", "--train-data", f"{a}:1", "--train-data",
            f"{b}:3", "--tokenizer", tokenizer_dir, "--out", out, *TINY, "--max-steps", "12",
            "--log-every", "1", "--save-every", "5", "--lr", "1e-3", *extra,
        ]  # fmt: skip

    whole = tmp_path / "whole"
    result = invoke(*args(whole))
    assert result.exit_code == 0, result.output
    original = Trainer._train_step

    def dying(self, micro):
        if self.step == 7:
            raise SystemExit("killed")
        return original(self, micro)

    cut = tmp_path / "cut"
    monkeypatch.setattr(Trainer, "_train_step", dying)
    assert invoke(*args(cut)).exit_code != 0
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = invoke(*args(cut, "--resume"))
    assert resumed.exit_code == 0, resumed.output

    def losses(out):
        rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"]) for r in rows if r.get("split") is None]

    assert losses(cut) == losses(whole) and len(losses(whole)) == 12
    run = json.loads((whole / "run.json").read_text())
    sources = run["train_sources"]
    assert [(s["path"], s["weight"], s["examples"]) for s in sources] == [
        (a, 1.0, sizes[0]),
        (b, 3.0, sizes[1]),
    ]
    per_epoch = [s["examples_per_epoch"] for s in sources]
    assert sum(per_epoch) == sum(sizes) and abs(per_epoch[0] - sum(sizes) / 4) <= 0.5


def test_evaluate_reads_every_example_of_each_directory(invoke, tmp_path):
    """`evaluate --data-preprocessed A --data-preprocessed B` sums exactly A's and B's counts and
    averages their losses by those counts."""
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertForPreTraining(BertConfig(vocab_size=1000, **cfg)).save_pretrained(tmp_path / "ckpt")
    a = make_dir(tmp_path / "a", 0, [5, 4])
    b = make_dir(tmp_path / "b", 0, [6], pred=5)

    def evaluate(*dirs):
        args = ["evaluate", "--checkpoint", tmp_path / "ckpt", "--batch-size", "4", "--json"]
        for d in dirs:
            args += ["--data-preprocessed", d]
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    alone_a, alone_b, both = evaluate(a), evaluate(b), evaluate(a, b)
    assert both["num_sequences"] == alone_a["num_sequences"] + alone_b["num_sequences"] == 15
    masked = [r["num_masked_tokens"] for r in (alone_a, alone_b)]
    assert both["num_masked_tokens"] == sum(masked)
    mean = (alone_a["mlm_loss"] * masked[0] + alone_b["mlm_loss"] * masked[1]) / sum(masked)
    assert both["mlm_loss"] == pytest.approx(mean, rel=1e-5)
