"""raretarget.arrays: the sort-based distinct values equal numpy's."""

import numpy as np
import pytest

from raretarget.arrays import unique


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32, np.float64])
def test_unique_equals_numpy(dtype):
    rng = np.random.default_rng(3)
    for a in (rng.integers(0, 50, 1000), rng.integers(0, 2**40, 5000), np.array([], dtype=np.int64), np.array([7]),
              rng.integers(-5, 5, (30, 4))):
        a = a.astype(dtype)
        got, want = unique(a), np.unique(a)
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_unique_of_a_list_and_extreme_int64():
    x = [2**63 - 1, -(2**63), 0, 2**63 - 1, 5]
    assert unique(np.array(x, np.int64)).tolist() == sorted(set(x))
    assert unique([3, 1, 3]).tolist() == [1, 3]
