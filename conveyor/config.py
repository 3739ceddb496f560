"""Compatibility re-export: the Config moved beside the DAG it configures
(pipelines/config.py). Import from pipelines.config in new code."""
from components.spans import has_span_spec, split_span_path  # noqa: F401
from modules.settings import IMAGE_MODELS, TEXT_MODELS  # noqa: F401
from pipelines.config import KINDS, Config, ConfigError, load_config  # noqa: F401
