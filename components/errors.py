"""Errors Conveyor's components raise for the user: the message names the file, row, feature
or anomaly and what was expected. The runner prints them as one line instead of a traceback."""


class ComponentError(Exception):
    """Base of every error a Conveyor component raises on purpose."""


class IngestError(ComponentError, ValueError):
    """Input data that cannot be ingested; the message names the file/row and what was expected."""


class DataValidationError(ComponentError, RuntimeError):
    """The data does not match the schema; the message lists each anomaly."""


class InfraValidationError(ComponentError):
    """Base of the infra validator's errors (as TFX roots its own in InfraValidationError)."""


class InfraInputError(InfraValidationError, ValueError):
    """An infra validator parameter or its eval split cannot be used; the message says which."""


class ModelNotServable(InfraValidationError):
    """The server could not load or serve the model. The executor turns it into a
    'not blessed' verdict with this message as the reason; it never reaches the user."""


class ServerPortTaken(ModelNotServable):
    """Another process bound the server's port first; worth another try on a new port."""
