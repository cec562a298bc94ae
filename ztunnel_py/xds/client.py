"""The workload xDS client: Delta ADS from the control plane into an `XdsHandler`.

As ztunnel's (docs/istio-compat.md, "Stream flow"):
- one stream over the control-plane channel (TLS with the CA roots and hostname override, the
  node credential as `authorization: Bearer`), opened with one wildcard request per type
  (Address, then Authorization) carrying the node and `initial_resource_versions`, i.e. every
  resource already held, so a reconnect is not resent what it has;
- each response is converted resource by resource; the valid ones go to the handler
  (`XdsHandler.apply`), and the response is ACKed, or NACKed with the per-resource reasons
  joined by `"; "` when any resource was rejected;
- the handler hears of each type's first ACK (`XdsHandler.synced`): the agent's readiness;
- reconnect: 10 ms backoff doubling to 15 s after connection errors and errors (doubled before
  the first wait, as ztunnel does: 20 ms, 40 ms, ...), immediately (10 ms) after benign
  terminations (the server's max connection age and the like) and after a stream that had
  worked. The state is never cleared on disconnect: with the control plane
  gone the agent keeps serving its last state;
- metrics: `istio_xds_connection_terminations_total{reason}`, `istio_xds_message_total{url}`,
  `istio_xds_message_bytes_total{url}`.

grpcio blocks: the stream lives in worker threads. Requests go through a queue the gRPC
request thread drains; a pump thread reads responses, parses and converts them (the costly
part, kept off the trio thread) and hands them to the trio task over a memory channel of
size 1, which applies them and answers. Protobuf stays in `convert`. Like ztunnel's
`Handler<T>`, the handler is the client's only view of its user: the client names no store.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, cast

import grpc
import trio

from ztunnel_py.protocol.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    ClientStream,
    Request,
    XdsProtocolError,
)
from ztunnel_py.telemetry.metrics import XdsMetrics
from ztunnel_py.transport.backoff import Backoff
from ztunnel_py.transport.grpc_channel import ChannelError, ChannelOption, ControlPlaneChannel
from ztunnel_py.xds.convert import (
    WORKLOAD_DECODERS,
    DecodedResponse,
    NodeInfo,
    PayloadDecoder,
    XdsDecodeError,
    decode_response,
    encode_request,
)

log = logging.getLogger("ztunnel_py.xds.client")

DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
INITIAL_BACKOFF = 0.01
MAX_BACKOFF = 15.0
MAX_MESSAGE_BYTES = 200 * 1024 * 1024
CONNECT_TIMEOUT = 5.0

# ztunnel's channel settings: large messages, HTTP/2 keepalive 30 s with a 10 s timeout.
XDS_CHANNEL_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)

SHORT_TYPE = {ADDRESS_TYPE: "Address", AUTHORIZATION_TYPE: "Authorization"}
_BENIGN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
_BENIGN_UNAVAILABLE = ("transport is closing", "received prior goaway")


def agent_node(
    instance_ip: str,
    pod_name: str,
    pod_namespace: str,
    node_name: str,
    metadata: Mapping[str, str] | None = None,
    proxy_type: str = "ztunnel",
    cluster_domain: str = "cluster.local",
) -> NodeInfo:
    """The node ztunnel presents: id `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<cluster domain>` (a
    sidecar's starts with `sidecar~`, as istio-proxy's does)."""
    return NodeInfo(
        id=f"{proxy_type}~{instance_ip}~{pod_name}.{pod_namespace}~{pod_namespace}"
        f".svc.{cluster_domain}",
        metadata={
            **(metadata or {}),
            "NAME": pod_name,
            "NAMESPACE": pod_namespace,
            "INSTANCE_IPS": instance_ip,
            "NODE_NAME": node_name,
        },
    )


class _Call(Protocol):
    """What we use of grpc's streaming call object (an iterator of raw responses)."""

    def cancel(self) -> bool: ...

    def __iter__(self) -> Iterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a stream ended: the gRPC status, or our own verdict (a response that did not parse,
    no answer within the connect timeout)."""

    code: grpc.StatusCode | None  # None: the server completed the stream
    details: str
    decode_error: bool = False


_Item = DecodedResponse | StreamEnd


@dataclass
class XdsClientStatus:
    """What the client has seen, for logs, tests and benchmarks."""

    connected: bool = False
    streams: int = 0
    last_error: str = ""
    responses: dict[str, int] = field(default_factory=dict)
    # resources received (sent to us) per type, over all streams
    resources_received: dict[str, int] = field(default_factory=dict)
    acks: int = 0
    nacks: int = 0


class XdsHandler(Protocol):
    """Where a client's updates go."""

    def apply(self, update: DecodedResponse) -> None:
        """Apply one response's converted resources and its removals (rejected resources are
        already left out; they are NACKed)."""

    def synced(self, type_url: str) -> None:
        """The first ACK of `type_url` went out: that type's initial state is in."""


class XdsClient:
    def __init__(
        self,
        channel: ControlPlaneChannel,
        node: NodeInfo,
        handler: XdsHandler,
        *,
        decoders: Mapping[str, PayloadDecoder] = WORKLOAD_DECODERS,
        metrics: XdsMetrics | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """`channel` should carry `XDS_CHANNEL_OPTIONS`. The client subscribes to every type
        of `decoders` (wildcard), in their order."""
        self._channel = channel
        self._decoders = decoders
        self._node = node
        self._handler = handler
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._core = ClientStream(tuple(decoders))
        self._synced: set[str] = set()
        self.status = XdsClientStatus()

    def known(self, type_url: str) -> dict[str, str]:
        """Resource name -> version held for `type_url` (what a reconnect announces)."""
        return self._core.known(type_url)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a stream to the control plane until cancelled."""
        task_status.started()
        backoff = Backoff(2 * INITIAL_BACKOFF, MAX_BACKOFF)
        try:
            while True:
                end, worked = await self._stream_once()
                reason = termination_reason(end, worked)
                if self._metrics is not None:
                    self._metrics.terminated(reason)
                benign = reason in ("Reconnect", "Complete")
                if worked or benign:
                    backoff.reset()
                delay = INITIAL_BACKOFF if benign else backoff.next_delay()
                detail = f"{end.code.name}: {end.details}" if end.code else "stream completed"
                self.status.last_error = "" if reason == "Complete" else detail
                log_at = logging.DEBUG if benign else logging.WARNING
                log.log(
                    log_at,
                    "xDS stream to %s ended (%s: %s), reconnecting in %.2f s",
                    self._channel.address,
                    reason,
                    detail,
                    delay,
                )
                await trio.sleep(delay)
        finally:
            self.status.connected = False

    async def _stream_once(self) -> tuple[StreamEnd, bool]:
        """One stream, until it ends; returns how it ended and whether it got any response."""
        requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        for request in self._core.initial_requests():
            requests.put(encode_request(request, self._node))
        try:
            call = await trio.to_thread.run_sync(self._open, requests)
        except ChannelError as e:
            return StreamEnd(grpc.StatusCode.UNAVAILABLE, str(e)), False
        send, recv = trio.open_memory_channel[_Item](1)
        try:
            async with trio.open_nursery() as nursery, recv:
                nursery.start_soon(
                    partial(trio.to_thread.run_sync, self._pump, call, send, abandon_on_cancel=True)
                )
                # The server answers the initial requests at once: silence means a connection
                # that does not work (the connect timeout of the channel covers the rest).
                with trio.move_on_after(self._connect_timeout) as connecting:
                    item = await recv.receive()
                if connecting.cancelled_caught:
                    call.cancel()
                    nursery.cancel_scope.cancel()  # abandon the pump thread, it ends by itself
                    message = f"no answer within {self._connect_timeout:g} s"
                    return StreamEnd(grpc.StatusCode.UNAVAILABLE, message), False
                if isinstance(item, StreamEnd):
                    return item, False
                self.status.connected = True
                self.status.streams += 1
                log.info("xDS stream to %s established", self._channel.address)
                while not isinstance(item, StreamEnd):
                    requests.put(self._apply(item))
                    item = await recv.receive()
                return item, True
        finally:
            self.status.connected = False
            call.cancel()
            requests.put(None)

    def _open(self, requests: queue.SimpleQueue[bytes | None]) -> _Call:
        metadata = self._channel.metadata()
        # No (de)serializers: requests go out as encoded, responses come in as bytes and are
        # parsed by the pump (which also counts their size).
        multi = self._channel.get().stream_stream(
            DELTA_ADS, request_serializer=None, response_deserializer=None
        )
        # Fails fast while the channel cannot connect (a ConnectionError, as in ztunnel); the
        # channel keeps reconnecting in the background (see ControlPlaneChannel).
        return cast(_Call, multi(_drain(requests), metadata=metadata))

    def _pump(self, call: _Call, send: trio.MemorySendChannel[_Item]) -> None:
        """Worker thread: read, parse and convert responses; end with a `StreamEnd`."""
        try:
            try:
                for raw in call:
                    trio.from_thread.run(send.send, decode_response(raw, self._decoders))
                end = StreamEnd(None, "")
            except grpc.RpcError as e:
                end = StreamEnd(e.code(), e.details() or "")
            except XdsDecodeError as e:
                call.cancel()
                end = StreamEnd(grpc.StatusCode.INTERNAL, str(e), decode_error=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
                raise
            except Exception as e:
                # A response we failed to handle ends this stream, never the agent.
                log.exception("cannot process an xDS response")
                call.cancel()
                end = StreamEnd(grpc.StatusCode.INTERNAL, repr(e), decode_error=True)
            trio.from_thread.run(send.send, end)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.RunFinishedError,
            trio.Cancelled,
        ):
            # The trio side stopped listening (cancelled or shutting down).
            call.cancel()

    def _apply(self, response: DecodedResponse) -> bytes:
        """Apply a response's valid resources and return the encoded ACK or NACK."""
        type_url = response.type_url
        status = self.status
        status.responses[type_url] = status.responses.get(type_url, 0) + 1
        received = len(response.accepted) + len(response.rejected)
        status.resources_received[type_url] = status.resources_received.get(type_url, 0) + received
        if self._metrics is not None:
            self._metrics.received(type_url, response.size)
        removed = response.removed
        if type_url in self._decoders:
            self._handler.apply(response)
        try:
            answer = self._core.response(
                type_url, response.nonce, response.accepted, removed, response.rejected
            )
        except XdsProtocolError as e:
            answer = Request(type_url, response_nonce=response.nonce, error=str(e))
        log.info(
            "xDS %s version %s: %d resources, %d removed%s",
            SHORT_TYPE.get(type_url, type_url),
            response.system_version,
            len(response.accepted),
            len(removed),
            f", {len(response.rejected)} rejected" if response.rejected else "",
        )
        if answer.is_nack:
            status.nacks += 1
            log.error("NACK %s nonce %s: %s", type_url, response.nonce, answer.error)
        else:
            status.acks += 1
            if type_url not in self._synced:
                self._synced.add(type_url)
                self._handler.synced(type_url)
        return encode_request(answer)


def _drain(requests: queue.SimpleQueue[bytes | None]) -> Iterator[bytes]:
    """The request stream: queued requests until a None (gRPC's request thread blocks here)."""
    while (item := requests.get()) is not None:
        yield item


def termination_reason(end: StreamEnd, worked: bool) -> str:
    """ztunnel's reasons: Complete (server ended the stream), Reconnect (benign termination),
    ConnectionError (never connected), Error (anything else)."""
    if end.code is None or end.code is grpc.StatusCode.OK:
        return "Complete"
    if end.decode_error:
        return "Error"
    if end.code in _BENIGN:
        return "Reconnect"
    if end.code is grpc.StatusCode.UNAVAILABLE:
        if any(text in end.details for text in _BENIGN_UNAVAILABLE):
            return "Reconnect"
        if not worked:
            return "ConnectionError"
    return "Error"
