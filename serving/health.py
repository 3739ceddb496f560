"""The standard gRPC health service (grpc.health.v1.Health), `--enable_grpc_healthcheck_service`.

TF Serving turns on gRPC's default health service and marks "ModelService" and
"PredictionService" SERVING (model_servers/server.cc); "" (the whole server) is SERVING too and
any other service name is NOT_FOUND, as in gRPC's DefaultHealthCheckService.

The messages are defined here, field-compatible with grpc/health/v1/health.proto, because
grpcio-health-checking is not a dependency; `grpc_health_probe` and Kubernetes' gRPC probes
speak to it unchanged.
"""
import asyncio

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "grpc.health.v1.Health"
SERVICES = {"": 1, "ModelService": 1, "PredictionService": 1}  # ServingStatus.SERVING = 1


def _messages():
    file = descriptor_pb2.FileDescriptorProto(name="conveyor/grpc_health_v1.proto",
                                              package="grpc.health.v1", syntax="proto3")
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = message_factory.MessageFactory(pool).GetPrototype
    return (get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))


HealthCheckRequest, HealthCheckResponse = _messages()


async def _check(request, context):
    status = SERVICES.get(request.service)
    if status is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return HealthCheckResponse(status=status)


async def _watch(request, context):
    """Sends the current status (SERVICE_UNKNOWN = 3 for other names) and keeps the stream open
    until the client cancels it or the server stops (either cancels this coroutine)."""
    yield HealthCheckResponse(status=SERVICES.get(request.service, 3))
    await asyncio.get_running_loop().create_future()


def add_health_service(server: grpc.aio.Server) -> None:
    """Registers grpc.health.v1.Health (Check and Watch) on the grpc.aio `server`."""
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            _check, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
        "Watch": grpc.unary_stream_rpc_method_handler(
            _watch, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
