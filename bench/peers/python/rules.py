"""tally's validation and transform rules (src/event/), for the Python peers.

Every peer classifies a record as tally does, so that every row of the table
must produce the same output and DLQ counts for the same input.
"""

import ipaddress
import json
from datetime import datetime, timezone

MAX_VALUE_BYTES = 256 * 1024
MAX_FUTURE_SKEW_SECS = 24 * 3600
FALLBACK_LATEST = 4_102_444_800  # 2100-01-01, for records without a Kafka timestamp
REQUIRED = ("user_id", "app_version", "device_type", "ip", "locale", "device_id", "timestamp")
STRINGS = REQUIRED[:-1]


class Rejected(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _timestamp(v):
    if isinstance(v, bool):
        raise Rejected("wrong_type", "timestamp must be an integer or a numeric string")
    if isinstance(v, int):
        if v < 0:
            raise Rejected("negative_timestamp", "timestamp is negative")
        if v > 2**63 - 1:
            raise Rejected("future_timestamp", "timestamp out of range")
        return v
    if isinstance(v, float):
        raise Rejected("bad_timestamp", "timestamp is not a whole number of seconds")
    if isinstance(v, str):
        t = v.strip()
        if t.startswith("-") and t[1:].isascii() and t[1:].isdigit():
            raise Rejected("negative_timestamp", "timestamp is negative")
        if not t or not (t.isascii() and t.isdigit()):
            raise Rejected("bad_timestamp", "timestamp is not epoch seconds")
        n = int(t)
        if n > 2**63 - 1:
            raise Rejected("future_timestamp", "timestamp out of range")
        return n
    raise Rejected("wrong_type", "timestamp must be an integer or a numeric string")


def _valid_version(v):
    parts = digits = 0
    for c in v:
        if "0" <= c <= "9":
            if parts >= 4 or digits >= 19:
                return False
            digits += 1
        elif c == "." and digits > 0:
            parts, digits = parts + 1, 0
        elif c in "-+":
            break
        else:
            return False
    return digits > 0


def validate(value, record_timestamp_ms):
    """The event as a dict (timestamp as an int), or raises Rejected."""
    if value is None:
        raise Rejected("null_value", "record value is null (tombstone)")
    if not value:
        raise Rejected("empty_value", "record value is empty")
    if len(value) > MAX_VALUE_BYTES:
        raise Rejected("too_large", f"value is {len(value)} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("invalid_utf8", "value is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError:
        raise Rejected("invalid_json", "value is not valid JSON") from None
    if not isinstance(data, dict):
        raise Rejected("not_an_object", "value is not an object")
    for f in REQUIRED:
        if f not in data:
            raise Rejected("missing_field", f"required field {f} is missing")
        if data[f] is None:
            raise Rejected("null_field", f"required field {f} is null")
    for f in STRINGS:
        if not isinstance(data[f], str):
            raise Rejected("wrong_type", f"field {f} must be a string")
        if not data[f].strip():
            raise Rejected("empty_field", f"field {f} is empty")
    ts = _timestamp(data["timestamp"])
    latest = record_timestamp_ms // 1000 + MAX_FUTURE_SKEW_SECS if record_timestamp_ms and record_timestamp_ms >= 0 else FALLBACK_LATEST
    if ts > latest:
        raise Rejected("future_timestamp", "timestamp is in the future")
    try:
        ip = ipaddress.ip_address(data["ip"])
    except ValueError:
        raise Rejected("bad_ip", "ip is neither IPv4 nor IPv6") from None
    if not _valid_version(data["app_version"]):
        raise Rejected("bad_app_version", "app_version is not a version")
    data["timestamp"] = ts
    data["_ip"] = ip
    return data


def mask_ip(ip):
    prefix = 24 if ip.version == 4 else 48
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return f"{net.network_address}/{prefix}"


def transform(event, topic, partition, offset):
    """The processed record's value, with tally's fields."""
    ip = event.pop("_ip")
    event["ip"] = mask_ip(ip)
    event["login_time"] = datetime.fromtimestamp(event["timestamp"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    event["processed"] = True
    event["source_topic"] = topic
    event["source_partition"] = partition
    event["source_offset"] = offset
    return json.dumps(event, separators=(",", ":")).encode()


def dlq_headers(reason, message, topic, partition, offset):
    return [
        ("tally.reason", reason.encode()),
        ("tally.message", message.encode()),
        ("tally.source.topic", topic.encode()),
        ("tally.source.partition", str(partition).encode()),
        ("tally.source.offset", str(offset).encode()),
    ]


def count_keys(event):
    """The four aggregate keys one valid event increments."""
    return ("d:" + event["device_type"], "v:" + event["app_version"], "l:" + event["locale"],
            "m:" + str(event["timestamp"] // 60))
