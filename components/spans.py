"""TFX span specs in Conveyor's inputs: `--data incoming/span-{SPAN}` and friends.

TFX's FileBasedExampleGen resolves {SPAN}/{VERSION}/{YYYY}{MM}{DD} only in the split pattern,
never in input_base; these helpers move a spec from --data into the pattern and find the
latest span's folder with TFX's own input processor, exactly as its driver does at run time.
"""
import os
import re
from typing import Optional, Tuple

from components.errors import IngestError

# TFX's span/version/date specs, e.g. span-{SPAN}, {SPAN:3}, {YYYY}-{MM}-{DD}, v{VERSION}.
_SPAN_SPEC = re.compile(r"\{(SPAN|VERSION|YYYY|MM|DD)(:[^}]*)?\}")


def has_span_spec(path: Optional[str]) -> bool:
    """True when `path` contains a TFX span/version/date spec such as {SPAN} or {YYYY}."""
    return bool(path) and bool(_SPAN_SPEC.search(path))


def split_span_path(data: str, input_pattern: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(input_base, input_pattern) for ExampleGen from --data and input_pattern.

    TFX resolves {SPAN} only in the split pattern, never in input_base, so a --data path such
    as /d/incoming/span-{SPAN} becomes input_base /d/incoming with pattern span-{SPAN}
    (input_pattern, if also given, is appended). Without a spec in --data both pass through.
    """
    if not has_span_spec(data):
        return data, input_pattern
    parts = data.rstrip(os.sep).split(os.sep)
    first = next(i for i, part in enumerate(parts) if has_span_spec(part))
    base = os.sep.join(parts[:first]) or os.sep
    pattern = "/".join(parts[first:])
    return base, f"{pattern}/{input_pattern}" if input_pattern else pattern


def latest_span_folder(input_base: str, pattern: Optional[str]) -> Optional[str]:
    """The latest span's folder when the pattern's last part names span folders.

    A pattern like `incoming/span-{SPAN}` names folders, not files, so the kind's layout
    detection (class folders, IDX, tables, review folders) has to look inside one to complete
    the glob. The span is resolved by TFX's own FileBasedInputProcessor, exactly as the
    ExampleGen driver resolves it at run time. None when the pattern has no span spec in its
    last part, or that part names files.
    """
    # TFX imported here: the CLI and the config import this module before TensorFlow is needed.
    from tfx.components.example_gen.input_processor import FileBasedInputProcessor
    from tfx.proto import example_gen_pb2

    if not pattern or not has_span_spec(os.path.basename(pattern.rstrip("/"))):
        return None
    processor = FileBasedInputProcessor(
        input_base, [example_gen_pb2.Input.Split(name="single_split", pattern=pattern)], None)
    try:
        span, version = processor.resolve_span_and_version()
    except ValueError as e:
        raise IngestError(f"{os.path.join(input_base, pattern)}: no span matches ({e})") from e
    path = os.path.join(input_base, processor.get_pattern_for_span_version(pattern, span, version))
    return path if os.path.isdir(path) else None
