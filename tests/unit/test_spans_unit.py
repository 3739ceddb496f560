"""TFX span specs in --data (components/spans.py)."""
from components.spans import has_span_spec, split_span_path


def test_split_span_path_moves_the_span_part_into_the_pattern():
    assert split_span_path("/d/incoming/span-{SPAN}") == ("/d/incoming", "span-{SPAN}")
    assert split_span_path("/d/in/day-{YYYY}{MM}{DD}/x", "*.csv") == ("/d/in", "day-{YYYY}{MM}{DD}/x/*.csv")
    assert split_span_path("/d/in/{SPAN:3}/v{VERSION}") == ("/d/in", "{SPAN:3}/v{VERSION}")
    assert split_span_path("/d/plain", "span-{SPAN}/*") == ("/d/plain", "span-{SPAN}/*")
    assert split_span_path("/d/plain") == ("/d/plain", None)


def test_has_span_spec_knows_tfx_specs():
    assert has_span_spec("in/span-{SPAN}") and has_span_spec("{YYYY}-{MM}-{DD}") and has_span_spec("v{VERSION}")
    assert not has_span_spec("in/span-1") and not has_span_spec(None) and not has_span_spec("{OTHER}")
