"""Progress reporting: a rich bar with rate and ETA on a terminal, nothing off one or under --json."""

from __future__ import annotations

import io

from rich.console import Console

from bertcli.console import PlainReporter, RichReporter, make_reporter


def test_rich_bar_shows_progress_rate_and_fields():
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=160))
    reporter.start("Pretraining", total=10, unit="steps")
    for step in range(10):
        reporter.advance(1, loss=9.5 - step * 0.1, lr=1e-4)
    reporter.log("saved checkpoints/step_00000010")
    reporter.finish()
    out = buffer.getvalue()
    assert "Pretraining" in out and "10/10" in out and "100%" in out
    assert "loss=8.6" in out and "steps/s" in out
    assert "saved checkpoints/step_00000010" in out


def test_byte_phases_show_sizes():
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=160))
    reporter.start("Downloading x.zip", total=4 << 20, unit="bytes")
    reporter.advance(4 << 20)
    reporter.finish()
    assert "4.2/4.2 MB" in buffer.getvalue()


def test_quiet_off_a_terminal_and_under_json(capsys):
    assert isinstance(make_reporter(), PlainReporter)  # pytest's stdout is not a terminal
    reporter = make_reporter()
    reporter.start("x", total=3)
    reporter.advance(3)
    reporter.finish()
    assert capsys.readouterr().out == ""


def test_json_keeps_progress_on_stderr(capsys, monkeypatch):
    """--json: stdout is the JSON's alone, yet a log of stderr shows the run advancing."""
    reporter = make_reporter(quiet=True)
    assert isinstance(reporter, PlainReporter)
    monkeypatch.setattr(reporter, "every_seconds", 0.0)
    reporter.start("Pretraining", total=3, unit="steps")
    reporter.advance(2, loss=7.5)
    reporter.status(step=2, loss=7.5)
    reporter.finish()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Pretraining 2/3 steps" in captured.err and "loss=7.5" in captured.err


def test_slow_rates_are_seconds_per_step(capsys):
    """0.3 steps/s hides a 3.0-3.5 s range: below one unit per second the line says s/step."""
    import time

    reporter = PlainReporter(every_seconds=1e9)
    reporter.start("Pretraining", total=100, unit="steps")
    reporter.advance(3)
    reporter.t0 = time.monotonic() - 10.0  # 3 steps in 10 s
    line = reporter.progress_line({})
    assert "3.3 s/step" in line and "steps/s" not in line
    reporter.t0 = time.monotonic() - 0.5  # 3 steps in 0.5 s
    assert "6.0 steps/s" in reporter.progress_line({})


def test_rich_bar_shows_seconds_per_step_when_slow():
    import time

    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, force_terminal=True, width=160))
    reporter.start("Pretraining", total=3, unit="steps")
    for _ in range(3):
        time.sleep(1.2)
        reporter.advance(1)
    reporter.finish()
    assert "s/step" in buffer.getvalue()


def test_heartbeat_lines_mark_the_last_logged_values(capsys):
    """A periodic line between log steps repeats the fields of the last log step: it says which
    step they are from; a line at the step they were given does not."""
    reporter = PlainReporter(every_seconds=0.0)  # every advance prints a line
    reporter.start("Pretraining", total=10, unit="steps")
    reporter.advance(1, loss=7.14, lr=1e-4)
    reporter.advance(1)
    reporter.advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert "loss=7.14" in lines[0] and "(step" not in lines[0]
    assert "lr=0.0001 (step 1)" in lines[1] and "Pretraining 2/10" in lines[1]
    assert "(step 1)" in lines[2] and "Pretraining 3/10" in lines[2]
