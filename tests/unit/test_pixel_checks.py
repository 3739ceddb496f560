"""serving_pixels' input checks (modules/export.checked_pixels), run the way the server runs
a signature: a saved model fed through a Session callable, without TF's client-side shape
check (serving/servables.SavedModelServable)."""
import numpy as np
import pytest
import tensorflow as tf

from modules.export import checked_pixels
from serving.errors import ServingError
from serving.servables import SavedModelServable


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    module = tf.Module()
    module.serve = tf.function(lambda pixels: {"total": tf.reduce_sum(checked_pixels(pixels, (28, 28, 1)))},
                               autograph=False)
    path = str(tmp_path_factory.mktemp("pixels") / "1")
    tf.saved_model.save(module, path, signatures={"serving_pixels": module.serve.get_concrete_function(
        tf.TensorSpec([None, 28, 28, 1], tf.float32, name="pixels"))})
    loaded = SavedModelServable("pixels", 1, path)
    yield loaded
    loaded.close()


def _error(servable, pixels) -> str:
    with pytest.raises(ServingError) as raised:
        servable.run("serving_pixels", {"pixels": pixels.astype(np.float32)}, ("total",), 10_000)
    return raised.value.message


def test_pixels_in_range_and_shape_pass(servable):
    pixels = np.full([2, 28, 28, 1], 0.5, np.float32)
    total = servable.run("serving_pixels", {"pixels": pixels}, ("total",), 10_000)["total"]
    assert total == pytest.approx(2 * 28 * 28 * 0.5)


def test_another_rank_always_names_the_expected_shape(servable):
    # The range checks cannot reduce a rank-3 tensor over 4 axes; they must never run first
    # (CI once got "Invalid reduction dimension" here, depending on op scheduling).
    for _ in range(50):
        message = _error(servable, np.full([8, 28, 28], 0.5))
        assert "serving input pixels: expected shape [N, 28, 28, 1], got" in message, message
        assert "reduction" not in message, message


def test_wrong_size_and_unscaled_pixels(servable):
    assert "expected shape [N, 28, 28, 1], got" in _error(servable, np.full([8, 8, 8, 1], 0.5))
    assert "expected float pixels in [0, 1] (divide 8-bit values by 255)" in _error(
        servable, np.full([1, 28, 28, 1], 255.0))
