"""Session fixtures for every tier (helpers are plain modules in tests/support/)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """sklearn's real digits as a class-folder tree of PNGs (the demo's default data)."""
    from data.digits import materialize_digits
    return materialize_digits(str(tmp_path_factory.mktemp("digits") / "digits"))
