"""components/pusher.py's executor when it must not push: the reason names the verdict."""
import pytest
from tfx.types import standard_artifacts

from components.pusher import Executor


def _verdict(cls, blessed: int):
    artifact = cls()
    artifact.set_int_custom_property("blessed", blessed)
    return artifact


@pytest.mark.parametrize("model_blessed, infra_blessed, reason", [
    (0, 1, "not blessed"), (1, 0, "infra validation failed"), (0, 0, "not blessed; infra validation failed")])
def test_not_pushed_names_the_verdict_that_said_no(tmp_path, model_blessed, infra_blessed, reason):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    Executor().Do({"model": [model],
                   "model_blessing": [_verdict(standard_artifacts.ModelBlessing, model_blessed)],
                   "infra_blessing": [_verdict(standard_artifacts.InfraBlessing, infra_blessed)]},
                  {"pushed_model": [pushed]}, {"push_destination": "{}"})
    assert pushed.get_int_custom_property("pushed") == 0
    assert pushed.get_string_custom_property("reason") == reason
    assert not (tmp_path / "serving").exists()
