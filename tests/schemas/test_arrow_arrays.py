"""Arrow arrays built from buffers are the arrays `pa.array` builds, without importing
pandas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.arrow_arrays import numeric_array, string_array

DTYPES = ["int8", "int32", "int64", "uint8", "float16", "float32", "float64", "bool"]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(DTYPES).flatmap(
        lambda dtype: (
            hnp.arrays(dtype, st.integers(0, 40), elements={"allow_nan": False})
            if dtype.startswith("float")
            else hnp.arrays(dtype, st.integers(0, 40))
        )
    ),
    st.integers(0, 3),
)
def test_a_numeric_array_equals_pa_array(values, step):
    values = values[:: step + 1]  # strided views too
    assert numeric_array(values).equals(pa.array(values))


def test_big_endian_values_are_read_as_their_numbers():
    values = np.array([1, 2, 300], dtype=">i4")
    assert numeric_array(values).to_pylist() == [1, 2, 300]


def test_only_one_dimension_is_taken():
    with pytest.raises(ValueError, match="1-D"):
        numeric_array(np.zeros((2, 2), np.float32))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)))
def test_a_string_array_equals_pa_array(values):
    assert string_array(values).equals(pa.array(values, type=pa.string()))


def test_a_lone_surrogate_is_refused_as_pa_array_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        string_array(["ok", "\ud800"])
    with pytest.raises((UnicodeEncodeError, pa.ArrowInvalid)):
        pa.array(["ok", "\ud800"], type=pa.string())


def test_building_arrays_imports_no_pandas():
    code = (
        "import sys, numpy as np\n"
        "from schemas.arrow_arrays import numeric_array, string_array\n"
        "numeric_array(np.arange(3)); numeric_array(np.ones(2, bool)); string_array(['a'])\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
