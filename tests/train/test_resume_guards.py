"""--resume refuses silent changes, repairs metrics.jsonl and skips a damaged newest checkpoint;
off a terminal, training prints one plain line per logged step."""

from __future__ import annotations

import json

from bertcli.train import checkpoint as ckpt
from tests.train.test_trainer import pretrain_args


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


def test_resume_guards_metrics_repair_and_fallback(invoke, corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    ckdir = out / "checkpoints"

    def run(*extra):
        return invoke(*pretrain_args(corpus, tokenizer_dir, out, "--device", "cpu", *extra))

    first = run("--max-steps", "3", "--log-every", "1", "--save-every", "1")
    assert first.exit_code == 0, first.output
    # off a terminal: one plain line per logged step with step/total, losses, lr, rate, ETA
    plain = [line for line in first.stderr.splitlines() if line.startswith("Pretraining ")]
    assert [line.split()[1] for line in plain] == ["1/3", "2/3", "3/3"]
    assert all("loss=" in x and "mlm_loss=" in x and "lr=" in x and "eta " in x for x in plain)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    # changed settings: one line naming each change; nothing is written
    before = sorted(p.name for p in ckdir.iterdir())
    line = _one_error_line(
        run("--max-steps", "5", "--batch-size", "4", "--optimizer", "sgd", "--resume")
    )
    assert "--batch-size 8 -> 4" in line and "--optimizer adamw -> sgd" in line
    assert "--allow-changes" in line and "step_00000003" in line
    assert sorted(p.name for p in ckdir.iterdir()) == before
    line = _one_error_line(run("--max-steps", "2", "--resume"))
    assert "--max-steps" in line and "(3)" in line
    done = run("--max-steps", "3", "--resume")  # a requeued job that had already finished
    assert done.exit_code == 0, done.output
    assert f"trained to step 3 (loss {rows[2]['loss']:.4f})" in done.stdout

    # the step-3 row was cut by a power loss and a foreign byte landed in the file
    text = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(b"".join(text[:-1]) + b"\xff\xfe\n" + text[-1][:15])
    safe = run("--max-steps", "4", "--log-every", "2", "--save-every", "1", "--resume")
    assert safe.exit_code == 0, safe.output  # options that may change pass silently
    assert "allow-changes" not in safe.stderr
    got = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert got[:3] == rows  # row 3 rewritten from the checkpoint's own summary
    assert [r["step"] for r in got] == [1, 2, 3, 4]

    allowed = run("--max-steps", "6", "--optimizer", "sgd", "--allow-changes", "--resume")
    assert allowed.exit_code == 0, allowed.output
    assert "--allow-changes: --optimizer adamw -> sgd" in allowed.stderr
    assert "fresh state" in allowed.stderr

    # a damaged newest checkpoint: skipped with one line, the previous complete one is used
    newest = ckpt.latest_checkpoint(ckdir)
    assert newest.name == "step_00000006"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fallback = run("--max-steps", "7", "--resume")  # step 4 was saved with adamw
    assert fallback.exit_code == 0, fallback.output
    skipped = [x for x in fallback.stderr.splitlines() if "skipping damaged checkpoint" in x]
    assert len(skipped) == 1 and "step_00000006 (model.safetensors: " in skipped[0]
    assert "resuming from" in fallback.stderr and "step_00000004" in fallback.stderr
    assert ckpt.verify_checkpoint(ckdir / "step_00000007") is None
