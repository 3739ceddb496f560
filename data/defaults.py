"""The offline default data of each pipeline kind (what `make demo` and tests run on)."""
import os


def default_data(kind: str, home: str) -> str:
    """Path of the default data of `kind` under HOME, written there on first use.

    Args:
      kind: "image" -> scikit-learn's 1,797 8x8 digits as PNG class folders under
        HOME/data/digits; "text" -> the 100 labelled IMDB reviews bundled in the tfx package.
      home: the Conveyor HOME folder.
    Returns:
      an absolute folder path for --data.
    """
    if kind == "image":
        from data.digits import materialize_digits
        return materialize_digits(os.path.join(os.path.abspath(home), "data", "digits"))
    from data.imdb import bundled_reviews_dir
    return bundled_reviews_dir(home)
