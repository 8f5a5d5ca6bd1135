"""Multi-node without a shared filesystem: two gloo ranks, each in its own working directory, so
a relative --out names a different directory on each — as on two nodes with local disks.

Rank 0 makes every decision that depends on files and broadcasts it; a rank that cannot see what
rank 0 wrote stops every rank at once with one line saying the run directory must be shared.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from bertcli.train.checkpoint import latest_checkpoint
from tests.train.conftest import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(tmp_path, *args: str) -> list[subprocess.CompletedProcess]:
    """Run `bertcli pretrain ARGS` as ranks 0 and 1, in tmp_path/node0 and tmp_path/node1."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, "-m", "bertcli", "pretrain", *args]
        procs.append(
            subprocess.Popen(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def _common(corpus, *extra):
    return [
        "--data-text",
        "--train-data",
        str(corpus / "train.txt"),
        "--out",
        "run",  # relative: node0/run and node1/run are different directories
        *TINY,
        "--device",
        "cpu",
        *extra,
    ]


def _error(result) -> str:
    lines = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.slow
def test_a_rank_that_cannot_see_the_built_tokenizer_stops_all(corpus, tmp_path):
    results = two_nodes(tmp_path, *_common(corpus, "--max-steps", "2", "--vocab-size", "300"))
    path = os.path.join("run", "tokenizer", "tokenizer.json")
    for result in results:
        line = _error(result)
        assert f"rank 1 cannot see {path}, which rank 0 wrote" in line
        assert "must be on a filesystem shared by all nodes" in line
    assert (tmp_path / "node0" / path).is_file()


@pytest.mark.slow
def test_resume_and_final_save_are_rank_0s_decisions(corpus, tokenizer_dir, tmp_path):
    tok = ["--tokenizer", str(tokenizer_dir)]
    # node1 holds a stale copy of the final checkpoint: if each rank checked for itself, rank 1
    # would skip the final save's collective and rank 0 would wait for it until the timeout
    stale = tmp_path / "node1" / "run" / "checkpoints" / "step_00000002"
    stale.mkdir(parents=True)
    (stale / "trainer_state.pt").write_bytes(b"")
    # the token cache is shared (rank 0 builds it once for all ranks); the rest is not
    (tmp_path / "node0" / "run" / "cache").mkdir(parents=True)
    (tmp_path / "node1" / "run" / "cache").symlink_to(tmp_path / "node0" / "run" / "cache")
    results = two_nodes(tmp_path, *_common(corpus, "--max-steps", "2", *tok))
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:]
    first = latest_checkpoint(tmp_path / "node0" / "run" / "checkpoints")
    assert first.name == "step_00000002"

    # --resume: rank 0 picks node0's checkpoint, which node1 cannot see
    (stale / "trainer_state.pt").unlink()
    stale.rmdir()
    results = two_nodes(tmp_path, *_common(corpus, "--max-steps", "4", "--resume", *tok))
    path = os.path.join("run", "checkpoints", "step_00000002", "trainer_state.pt")
    for result in results:
        assert f"rank 1 cannot see {path}, which rank 0 wrote" in _error(result)
