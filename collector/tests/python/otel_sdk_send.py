"""Sends spans with the real OpenTelemetry Python SDK and its OTLP exporters.

Usage: otel_sdk_send.py --grpc HOST:PORT --http URL [--oversized] [--ca FILE]
                        [--timeout SECONDS] [--header KEY=VALUE]...
Exports once per exporter, plain and gzip-compressed. Prints
{"grpc": id, "http": id, "grpc-gzip": id, "http-gzip": id} (trace ids; the
service of each is "py-" + its key) on success.

With --ca, both exporters use TLS and trust the CA certificates in FILE
(the gRPC exporter through grpc.ssl_channel_credentials, the HTTP exporter
through certificate_file; --http is then an https:// URL). Any failed
export exits 1 with the reason on stderr.

Each --header is sent with every export (as `authorization=Bearer …`).

With --oversized, the SDK's own limits are lifted and each plain exporter
sends two one-span traces over the collector's limits: a span of 100,000
attributes and a span with a 15 MB string value. Prints {"grpc-attributes":
id, "grpc-value": id, "http-attributes": id, "http-value": id}.
"""
import argparse
import json
import sys

import grpc

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def make_spans(service):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("clew-e2e")
    with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.request.method", "GET")
        parent.set_attribute("http.response.status_code", 200)
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as child:
            child.set_attribute("db.system", "postgresql")
            child.add_event("rows fetched", {"rows": 3})
            child.set_status(Status(StatusCode.ERROR, "timeout"))
        trace_id = format(parent.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id, memory.get_finished_spans()


def make_oversized(service, attributes, value_len):
    """One span over the collector's limits, the SDK's own limits lifted."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        span_limits=SpanLimits(
            max_span_attributes=attributes + 1,
            max_span_attribute_length=SpanLimits.UNSET,
        ),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("clew-e2e")
    with tracer.start_as_current_span("huge") as span:
        for i in range(attributes):
            span.set_attribute(f"attr.{i}", i)
        if value_len:
            span.set_attribute("payload", "x" * value_len)
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id, memory.get_finished_spans()


def oversized(a):
    out = {}
    for name, make in (
        ("grpc", lambda: GrpcExporter(endpoint=a.grpc, insecure=True, timeout=60)),
        ("http", lambda: HttpExporter(endpoint=a.http, timeout=60)),
    ):
        for what, attributes, value_len in (("attributes", 100_000, 0), ("value", 0, 15_000_000)):
            key = f"{name}-{what}"
            trace_id, spans = make_oversized("py-" + key, attributes, value_len)
            exporter = make()
            result = exporter.export(spans)
            exporter.shutdown()
            if result != SpanExportResult.SUCCESS:
                print(f"{key} export failed: {result}", file=sys.stderr)
                return 1
            out[key] = trace_id
    print(json.dumps(out))
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc", required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--oversized", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--header", action="append", default=[])
    a = p.parse_args()
    h = dict(kv.split("=", 1) for kv in a.header)
    if a.oversized:
        return oversized(a)
    out = {}
    t = a.timeout
    if a.ca:
        with open(a.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        grpc_tls = {"insecure": False, "credentials": creds}
        http_tls = {"certificate_file": a.ca}
    else:
        grpc_tls = {"insecure": True}
        http_tls = {}
    for name, exporter in (
        ("grpc", GrpcExporter(endpoint=a.grpc, timeout=t, headers=h, **grpc_tls)),
        ("http", HttpExporter(endpoint=a.http, timeout=t, headers=h, **http_tls)),
        (
            "grpc-gzip",
            GrpcExporter(
                endpoint=a.grpc,
                timeout=t,
                compression=grpc.Compression.Gzip,
                headers=h,
                **grpc_tls,
            ),
        ),
        (
            "http-gzip",
            HttpExporter(
                endpoint=a.http,
                timeout=t,
                compression=HttpCompression.Gzip,
                headers=h,
                **http_tls,
            ),
        ),
    ):
        trace_id, spans = make_spans("py-" + name)
        # Export through the real exporter and insist it succeeded.
        result = exporter.export(spans)
        exporter.shutdown()
        if result != SpanExportResult.SUCCESS:
            print(f"{name} export failed: {result}", file=sys.stderr)
            return 1
        out[name] = trace_id
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
