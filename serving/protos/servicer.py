"""Registers ``fabriek.v1.InferenceService`` with Ray Serve's gRPC servers; fabriek decodes requests.

The generated ``add_InferenceServiceServicer_to_server`` has the gRPC server decode each request
before any fabriek code runs: bytes that do not decode as the method's message then end the call
UNKNOWN, with a traceback in the log, before the caller's key is looked at (found by
``loadtests/fuzz_api.py``). Registered here, the same methods receive the raw request bytes,
and the ingress decodes them (``serving.frontdoor.grpc_messages.decode``): bad bytes are
INVALID_ARGUMENT like any other bad field. Responses are serialized as generated.

Ray Serve's gRPC proxy (and, with the haproxy front end, every ingress replica) imports this
module, so it imports nothing but grpc and the generated messages.
"""

from __future__ import annotations

import grpc

from serving.protos.fabriek.v1 import inference_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]


def add_inference_service(servicer, server) -> None:
    """``add_InferenceServiceServicer_to_server``, with every request left undecoded (bytes)."""
    handlers = {}
    for method in SERVICE.methods:
        response = getattr(pb, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=None,
                                     response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:  # grpcio >= 1.62, as the generated code does
        add_registered(SERVICE.full_name, handlers)
