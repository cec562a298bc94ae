"""A gRPC client of the testbed pods' Echo service (`podgrpc` describes it and its JSON wire
format), for tests and for people at a shell:

    python -m ztunnel_py.testbed.grpcclient --target HOST:PORT unary [--request JSON]
    python -m ztunnel_py.testbed.grpcclient --target HOST:PORT stream --count N [--interval-ms M]

(options in any order) prints each response message as one JSON line on stdout, as it arrives.
A call that fails prints `{"code": NAME, "status": N, "details": TEXT}` on stderr and exits with
the gRPC status number (UNAVAILABLE, 14, when nothing answers). `--metadata KEY=VALUE`
(repeatable) adds call metadata, `--authority` sets `:authority` (the host a proxy routes on),
`--timeout` the call's deadline in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

import grpc

from ztunnel_py.testbed.podgrpc import SERVICE, STREAM, UNARY


class BadResponse(Exception):
    """A response message that is not a JSON object: whatever answered is not the Echo service."""


def call(
    target: str,
    method: str,
    request: dict[str, object],
    *,
    metadata: Sequence[tuple[str, str]] = (),
    authority: str | None = None,
    timeout: float = 10.0,
) -> Iterator[dict[str, object]]:
    """The responses of one call (`method` UNARY or STREAM), each as it arrives; grpc.RpcError
    when the call fails, BadResponse when a message is not JSON."""
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(target, options=options) as channel:
        path = f"/{SERVICE}/{method}"
        message = json.dumps(request).encode()
        pairs = tuple(metadata)
        # No (de)serializers: messages go out and come back as raw bytes.
        if method == UNARY:
            unary = channel.unary_unary(path, None, None)
            yield _decode(unary(message, timeout=timeout, metadata=pairs))
            return
        stream = channel.unary_stream(path, None, None)
        for response in stream(message, timeout=timeout, metadata=pairs):
            yield _decode(response)


def _decode(message: bytes) -> dict[str, object]:
    try:
        answer = json.loads(message.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadResponse(f"response is not UTF-8 JSON ({exc}): {message[:60]!r}") from exc
    if not isinstance(answer, dict):
        raise BadResponse(f"response is not a JSON object: {message[:60]!r}")
    return answer


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("wants a JSON object")
    return value


def _metadatum(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"wants KEY=VALUE, got {text!r}")
    return key.lower(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ztunnel_py.testbed.grpcclient",
        description="Calls a testbed pod's gRPC Echo service; prints responses as JSON lines.",
    )
    parser.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    parser.add_argument("--authority", help=":authority of the call (default: the target)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument(
        "--metadata", type=_metadatum, action="append", default=[], help="KEY=VALUE, repeatable"
    )
    parser.add_argument("--request", type=_json_object, default={}, help="request JSON object")
    parser.add_argument("--count", type=int, help="stream: responses wanted (0 to 1000)")
    parser.add_argument("--interval-ms", type=int, help="stream: milliseconds between responses")
    parser.add_argument("method", choices=("unary", "stream"), help="the Echo method to call")
    args = parser.parse_args(argv)
    request = dict(args.request)
    method = UNARY
    streaming = {"count": args.count, "interval_ms": args.interval_ms}
    if args.method == "stream":
        method = STREAM
        request.update((key, value) for key, value in streaming.items() if value is not None)
    elif any(value is not None for value in streaming.values()):
        parser.error("--count and --interval-ms are for the stream method")
    try:
        for answer in call(
            args.target,
            method,
            request,
            metadata=args.metadata,
            authority=args.authority,
            timeout=args.timeout,
        ):
            print(json.dumps(answer), flush=True)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        code = exc.code()
        failure = {"code": code.name, "status": code.value[0], "details": exc.details()}
        print(json.dumps(failure), file=sys.stderr)
        return int(code.value[0])
    except BadResponse as exc:
        print(f"grpcclient: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
