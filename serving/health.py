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
SERVICES = ("", "ModelService", "PredictionService")


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


SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3  # HealthCheckResponse.ServingStatus


class HealthService:
    """Check and Watch for the services in SERVICES; `shut_down()` turns them NOT_SERVING,
    as gRPC's DefaultHealthCheckService does when the server shuts down, and ends every Watch
    stream after telling it, so an open watch does not hold the server's drain.
    Used on one grpc.aio event loop only."""

    def __init__(self):
        self._serving = True
        self._stopped = asyncio.Event()

    def _status(self, service: str) -> int:
        if service not in SERVICES:
            return SERVICE_UNKNOWN
        return SERVING if self._serving else NOT_SERVING

    async def check(self, request, context):
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return HealthCheckResponse(status=self._status(request.service))

    async def watch(self, request, context):
        """Sends the current status, then the change to NOT_SERVING at shutdown (and ends);
        the client's cancellation ends it earlier."""
        yield HealthCheckResponse(status=self._status(request.service))
        if self._serving:
            await self._stopped.wait()
            yield HealthCheckResponse(status=self._status(request.service))

    def shut_down(self) -> None:
        self._serving = False
        self._stopped.set()


def add_health_service(server: grpc.aio.Server) -> HealthService:
    """Registers grpc.health.v1.Health (Check and Watch) on the grpc.aio `server`; call
    inside the server's event loop. Returns the service, for `shut_down()` at stop."""
    health = HealthService()
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            health.check, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
        "Watch": grpc.unary_stream_rpc_method_handler(
            health.watch, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return health
