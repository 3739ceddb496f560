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


def _entry(serving_dir, name):
    import os

    from serving.model_config import read_models_config
    config = read_models_config(os.path.join(serving_dir, "models.config"))
    return next(c for c in config.model_config_list.config if c.name == name)


def test_canary_push_keeps_stable_loaded_and_a_normal_push_ends_the_release(tmp_path):
    """Issue 23: the Pusher's canary push writes TF Serving's specific policy and labels."""
    from components.pusher import publish
    from serving.model_config import promote_canary, rollback_canary
    source = tmp_path / "model"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"x")
    serving_dir, base = str(tmp_path / "serving"), str(tmp_path / "serving" / "m")
    assert publish(str(source), base, "uri-1", 1, canary=True).version == 1  # first push: nothing to keep
    entry = _entry(serving_dir, "m")
    assert not entry.HasField("model_version_policy") and not entry.version_labels
    assert publish(str(source), base, "uri-2", 2, canary=True).version == 2
    entry = _entry(serving_dir, "m")
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert publish(str(source), base, "uri-3", 3, canary=True).version == 3  # replaces the live canary
    entry = _entry(serving_dir, "m")
    assert list(entry.model_version_policy.specific.versions) == [1, 3]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 3}
    assert rollback_canary(serving_dir, "m") == (1, 3)
    entry = _entry(serving_dir, "m")
    assert list(entry.model_version_policy.specific.versions) == [1] and dict(entry.version_labels) == {"stable": 1}
    with pytest.raises(ValueError, match="model m has no canary"):
        promote_canary(serving_dir, "m")
    publish(str(source), base, "uri-4", 4, canary=True)
    assert promote_canary(serving_dir, "m") == (1, 4)
    entry = _entry(serving_dir, "m")
    assert list(entry.model_version_policy.specific.versions) == [4] and dict(entry.version_labels) == {"stable": 4}
    publish(str(source), base, "uri-5", 5)  # a normal push: TF Serving's default policy again
    entry = _entry(serving_dir, "m")
    assert not entry.HasField("model_version_policy") and not entry.version_labels


def test_executor_reads_canary_from_custom_config(tmp_path):
    import json
    import os
    serving_dir = tmp_path / "serving"
    for version in (1, 2):
        source = tmp_path / f"model{version}" / "Format-Serving"
        source.mkdir(parents=True)
        (source / "saved_model.pb").write_bytes(b"x")
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / f"pushed{version}")
        model = standard_artifacts.Model()
        model.uri = str(tmp_path / f"model{version}")
        model.id = version
        Executor().Do({"model": [model],
                       "model_blessing": [_verdict(standard_artifacts.ModelBlessing, 1)],
                       "infra_blessing": [_verdict(standard_artifacts.InfraBlessing, 1)]},
                      {"pushed_model": [pushed]},
                      {"push_destination": json.dumps({"filesystem": {"base_directory": str(serving_dir / "m")}}),
                       "custom_config": json.dumps({"canary": True})})
        assert pushed.get_int_custom_property("pushed") == 1
    assert sorted(os.listdir(serving_dir / "m")) == [".push.lock", "1", "2"]
    assert dict(_entry(str(serving_dir), "m").version_labels) == {"stable": 1, "canary": 2}


def test_a_retry_of_a_push_killed_after_its_rename_finishes_it(tmp_path):
    """An Airflow retry reuses the Pusher's execution and output uri: the version an earlier try
    published (killed before models.config and ML Metadata recorded it) is this push's."""
    import os

    from components.pusher import publish
    from serving.model_config import set_release, update_model
    source = tmp_path / "model"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"x")
    serving_dir, base = str(tmp_path / "serving"), str(tmp_path / "serving" / "m")
    first = publish(str(source), base, "uri-1", 1, pushed_uri="pushed-1")
    os.remove(os.path.join(serving_dir, "models.config"))   # the try died right after its rename
    retry = publish(str(source), base, "uri-1", 1, pushed_uri="pushed-1")
    assert (retry.version, retry.already_serving) == (1, False) and retry.destination == first.destination
    assert _entry(serving_dir, "m").base_path == base
    # A push record with the same PushedModel uri but another model (MLMD ids restarted while
    # HOME was kept) is not this push's: the other model is pushed as a new version.
    other = publish(str(source), base, "uri-7", 7, pushed_uri="pushed-1")
    assert (other.version, other.already_serving) == (2, False)
    publish(str(source), base, "uri-1", 1, pushed_uri="pushed-8")   # back to model 1 as version 3
    os.remove(os.path.join(serving_dir, "models.config"))
    retry = publish(str(source), base, "uri-1", 1, pushed_uri="pushed-8")
    assert (retry.version, retry.already_serving) == (3, False)
    # Another execution with the same model (a cached rerun): already serving, not pushed again.
    again = publish(str(source), base, "uri-1", 1, pushed_uri="pushed-9")
    assert (again.version, again.already_serving) == (3, True)
    assert sorted(os.listdir(base)) == [".push.lock", "1", "2", "3"]

    # A canary push killed after its rename: stable still labelled, the canary label missing.
    publish(str(source), base, "uri-2", 2, canary=True, pushed_uri="pushed-2")
    update_model(serving_dir, "m", lambda entry: set_release(entry, 3, also_load=(4,)))
    retry = publish(str(source), base, "uri-2", 2, canary=True, pushed_uri="pushed-2")
    assert (retry.version, retry.already_serving) == (4, False)
    assert dict(_entry(serving_dir, "m").version_labels) == {"stable": 3, "canary": 4}
