"""TF Serving's MonitoringConfig and BatchingParameters text protos
(--monitoring_config_file, --batching_parameters_file).

tensorflow-serving-api does not ship these messages, so they are defined here with the
names and field numbers of tensorflow_serving/config/monitoring_config.proto and
tensorflow_serving/servables/tensorflow/session_bundle_config.proto (2.16), and the files
are parsed with protobuf's own text format parser: a file written for TF Serving parses
here, and a misspelt field is an error naming the file and line.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow.serving"


def _field(message, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False):
    field = message.field.add(name=name, number=number, type=kind,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


def _build():
    file = descriptor_pb2.FileDescriptorProto(
        name="conveyor/tf_serving_configs.proto", package=_PACKAGE, syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    prometheus = file.message_type.add(name="PrometheusConfig")
    _field(prometheus, "enable", 1, _F.TYPE_BOOL)
    _field(prometheus, "path", 2, _F.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    _field(monitoring, "prometheus_config", 1, _F.TYPE_MESSAGE, f".{_PACKAGE}.PrometheusConfig")
    batching = file.message_type.add(name="BatchingParameters")
    int64, string, boolean = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                              ".google.protobuf.BoolValue")
    _field(batching, "max_batch_size", 1, _F.TYPE_MESSAGE, int64)
    _field(batching, "batch_timeout_micros", 2, _F.TYPE_MESSAGE, int64)
    _field(batching, "max_enqueued_batches", 3, _F.TYPE_MESSAGE, int64)
    _field(batching, "num_batch_threads", 4, _F.TYPE_MESSAGE, int64)
    _field(batching, "thread_pool_name", 5, _F.TYPE_MESSAGE, string)
    _field(batching, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    _field(batching, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    _field(batching, "enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, boolean)
    _field(batching, "max_execution_batch_size", 9, _F.TYPE_MESSAGE, int64)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    get = message_factory.MessageFactory(pool).GetPrototype
    return tuple(get(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
                 for name in ("MonitoringConfig", "BatchingParameters"))


MonitoringConfig, BatchingParameters = _build()


class ConfigFileError(ValueError):
    """A config file could not be read or parsed; the message names the file."""


def read_text_proto(path: str, message_class):
    """Parses the text-format file at `path` into a new `message_class`.

    Raises:
      ConfigFileError: missing file or a text-format error (with its line and column).
    """
    message = message_class()
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), message)
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read {message_class.DESCRIPTOR.name}: {e.strerror}") from e
    except text_format.ParseError as e:
        raise ConfigFileError(f"{path}: not a valid {message_class.DESCRIPTOR.name}: {e}") from e
    return message
