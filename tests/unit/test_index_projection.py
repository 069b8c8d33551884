"""Vector checks and the base projection."""
from __future__ import annotations

import numpy as np
import pytest

from faec_rec.errors import VectorError
from faec_rec.index.projection import BaseProjector, Projector, check_unit_vectors, check_vectors


def test_base_projector_normalises(rng: np.random.Generator) -> None:
    x = rng.normal(size=(7, 128)).astype(np.float32) * 3
    y = BaseProjector().project(x)
    assert y.dtype == np.float32 and y.shape == (7, 128)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    assert isinstance(BaseProjector(), Projector)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 64), np.float32),             # wrong width
        np.ones((2, 128), np.float64),             # wrong dtype
        np.zeros((1, 128), np.float32),            # zero vector
        np.full((1, 128), np.nan, np.float32),     # NaN
        [[0.0] * 128],                             # not an array
    ],
)
def test_bad_vectors_raise(bad) -> None:
    with pytest.raises(VectorError):
        check_vectors(bad)


def test_unit_check_refuses_raw_features(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 128)).astype(np.float32)
    with pytest.raises(VectorError, match="norm"):
        check_unit_vectors(x)
    assert check_unit_vectors(BaseProjector().project(x)).shape == (3, 128)
