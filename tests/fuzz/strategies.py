"""Hypothesis strategies shared by the fuzz tests: JSON values, and mutations of real files."""

from __future__ import annotations

from hypothesis import strategies as st

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def json_objects(keys: list[str]) -> st.SearchStrategy[dict]:
    """Objects whose keys are mostly the ones a reader looks for, with values of any type."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), JSON, max_size=len(keys))


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """`original` with a few bytes flipped, a slice cut out or duplicated, or truncated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "cut", "dup", "truncate", "insert"]))
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif kind == "dup":
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)
