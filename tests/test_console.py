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
    assert isinstance(make_reporter(quiet=True), PlainReporter)
    assert isinstance(make_reporter(), PlainReporter)  # pytest's stdout is not a terminal
    reporter = make_reporter()
    reporter.start("x", total=3)
    reporter.advance(3)
    reporter.finish()
    assert capsys.readouterr().out == ""
