"""Errors Conveyor's components raise for the user: the message names the file, row, feature
or anomaly and what was expected. The runner prints them as one line instead of a traceback."""


class ComponentError(Exception):
    """Base of every error a Conveyor component raises on purpose."""


class IngestError(ComponentError, ValueError):
    """Input data that cannot be ingested; the message names the file/row and what was expected."""


class DataValidationError(ComponentError, RuntimeError):
    """The data does not match the schema; the message lists each anomaly."""
