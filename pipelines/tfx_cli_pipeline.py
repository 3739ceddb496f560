"""Pipeline file for TFX's own CLI (local engine):

    tfx pipeline create --engine local --pipeline_path pipelines/tfx_cli_pipeline.py
    tfx run create --engine local --pipeline_name image_classifier

`tfx pipeline create` executes this file as __main__ with LocalDagRunner.run patched to only
record the pipeline's name and root; `tfx run create` runs `python <this file>`, so the real
run happens below. Both read the environment (see pipelines/env_config.py): CONVEYOR_KIND
(image, the default, or text), CONVEYOR_CONFIG / CONVEYOR_<KIND>_CONFIG, CONVEYOR_HOME.
"""
import os
import sys

from pipelines.config import ConfigError
from pipelines.env_config import config_from_env
from pipelines.pipeline import create_pipeline

if __name__ == "__main__":
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    try:
        config = config_from_env(os.environ.get("CONVEYOR_KIND", "image"))
    except ConfigError as e:
        sys.exit(f"conveyor: {e}")  # one line, not a traceback (the tfx CLI re-raises the exit)
    LocalDagRunner().run(create_pipeline(config))
