"""containerd event envelopes: event payloads packed the way containerd's typeurl expects."""

from __future__ import annotations

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from kata.protocols.pb import events_service_pb2

__all__ = ["envelope", "pack_event", "unpack_event_name"]

GOOGLE_PREFIX = "type.googleapis.com/"


def pack_event(event: Message) -> any_pb2.Any:
    """An Any whose type URL is the bare full name (``containerd.events.TaskExit``).

    containerd 1.6 resolves event type URLs through its typeurl registry, which knows the bare
    names only: ``ctr events`` cannot decode the ``type.googleapis.com/`` form that Any.Pack writes.
    """
    return any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


def unpack_event_name(packed: any_pb2.Any) -> str:
    """The full message name an Any carries, with or without the Google prefix."""
    return packed.type_url.removeprefix(GOOGLE_PREFIX)


def envelope(namespace: str, topic: str, event: Message,
             timestamp: timestamp_pb2.Timestamp | None = None) -> events_service_pb2.Envelope:
    """An Envelope as shims publish it with Events/Forward (timestamp defaults to now)."""
    if timestamp is None:
        timestamp = timestamp_pb2.Timestamp()
        timestamp.GetCurrentTime()
    return events_service_pb2.Envelope(timestamp=timestamp, namespace=namespace, topic=topic,
                                       event=pack_event(event))
