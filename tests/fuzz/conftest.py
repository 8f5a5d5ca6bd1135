"""The fuzz suite's shared settings: every reader of a file a user or a server hands us must
return a result or raise `UserError` — never another exception — and stay within a memory bound.

Settings for every fuzz test, including ones other modules add later::

    from tests.fuzz.conftest import FUZZ, read_within_bounds

    @FUZZ
    @given(data=st.binary())
    def test_my_reader(tmp_path_factory, data):
        read_within_bounds(lambda: my_reader(write(data)))

`FUZZ` is a `hypothesis.settings` object: `BERTCLI_FUZZ_EXAMPLES` examples per test (default 20,
so a CI run tries a few hundred inputs across the suite in well under 90 s), derandomized (the
same inputs on every run, from the test's name), no example database, no deadline, and no
shrinking phase (a found failure is reported as generated rather than after minutes of
shrinking). `BERTCLI_FUZZ_EXAMPLES=1000 pytest tests/fuzz` runs a long session; the summary line
says how many inputs were read.

`read_within_bounds(fn)` calls the reader with the address space capped at its current size plus
`MEMORY_HEADROOM` (RLIMIT_AS, lowered for the call only), so a header that makes a reader
allocate gigabytes fails the test with a MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, settings

from bertcli.errors import UserError

EXAMPLES = int(os.environ.get("BERTCLI_FUZZ_EXAMPLES", "20"))
MEMORY_HEADROOM = 2 << 30  # far more than any reader needs for these small inputs

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=(
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ),
    print_blob=False,
)

INPUTS = {"read": 0, "user_error": 0}  # counted across the session, shown in the summary


def _address_space() -> int | None:
    """This process's virtual size in bytes (Linux), None where /proc is missing."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    return None


@contextlib.contextmanager
def memory_bound(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """RLIMIT_AS at the current size + `headroom` while the block runs (no-op without /proc)."""
    size = _address_space()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if size is None:
        yield
        return
    limit = size + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def read_within_bounds(reader: Callable[[], Any]) -> Any:
    """Run one reader on one input: its result, or None if it raised UserError. Any other
    exception (MemoryError past the bound included) propagates and fails the test."""
    INPUTS["read"] += 1
    try:
        with memory_bound():
            return reader()
    except UserError as exc:
        INPUTS["user_error"] += 1
        assert str(exc).strip(), "a UserError must say what is wrong"
        assert "\n" not in str(exc).strip(), f"a UserError is one line: {exc!r}"
        return None


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: D103
    if INPUTS["read"]:
        terminalreporter.write_line(
            f"fuzz: {INPUTS['read']} inputs read ({INPUTS['user_error']} refused with UserError)"
            f", {EXAMPLES} examples per test"
        )
