"""The files of a run directory someone else wrote: trainer_state.pt and .json, metrics.jsonl,
and a checkpoint's files as resume verification reads them."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st

from bertcli.metrics import truncate_metrics
from bertcli.train.checkpoint import load_summary, load_trainer_state, verify_checkpoint
from tests.fuzz.conftest import FUZZ, read_within_bounds
from tests.fuzz.strategies import JSON, json_objects, mutated


def _state_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


_STATE = _state_bytes({"step": 3, "optimizer": {"state": {}, "param_groups": []}, "rng": {}})
SAFE_VALUES = st.recursive(
    st.none() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)  # what torch.save can write without pickling code: the file's shape is the variable


@FUZZ
@given(
    data=mutated(_STATE)
    | SAFE_VALUES.map(_state_bytes)
    | st.binary(max_size=300)
    | SAFE_VALUES.map(lambda v: pickle.dumps(v, protocol=2))
)
def test_trainer_state_pt(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "trainer_state.pt").write_bytes(data)
        read_within_bounds(lambda: load_trainer_state(path))


@FUZZ
@given(
    lines=st.lists(
        json_objects(["step", "split", "loss"]).map(json.dumps)
        | JSON.map(json.dumps)
        | st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
        max_size=20,
    ),
    after=st.integers(-5, 50),
)
def test_metrics_jsonl(lines, after):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "metrics.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", errors="surrogatepass"))
        read_within_bounds(lambda: truncate_metrics(path, after))


@FUZZ
@given(data=JSON.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
def test_trainer_state_json(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "trainer_state.json").write_bytes(data)
        read_within_bounds(lambda: load_summary(path))


@st.composite
def safetensors_files(draw) -> bytes:
    header = draw(
        json_objects(["w", "__metadata__"])
        | st.dictionaries(
            st.text(max_size=4),
            st.fixed_dictionaries(
                {"dtype": st.sampled_from(["F32", "I64", "x"]),
                 "shape": st.lists(st.integers(0, 2**40), max_size=3),
                 "data_offsets": st.lists(st.integers(-1, 2**62), min_size=0, max_size=3)}
            ),
            max_size=3,
        )
    )  # fmt: skip
    raw = json.dumps(header).encode()
    length = draw(st.sampled_from([len(raw), len(raw) + 1, 0, 2**62, 2**64 - 1]))
    return struct.pack("<Q", length) + raw + draw(st.binary(max_size=64))


@FUZZ
@given(weights=safetensors_files(), state=mutated(_STATE) | st.binary(max_size=50))
def test_checkpoint_verification(weights, state):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "config.json").write_text("{}")
        (path / "trainer_state.json").write_text("{}")
        (path / "model.safetensors").write_bytes(weights)
        (path / "trainer_state.pt").write_bytes(state)
        reason = read_within_bounds(lambda: verify_checkpoint(path))
        assert reason is None or isinstance(reason, str)
