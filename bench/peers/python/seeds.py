#!/usr/bin/env python3
"""The seeds' naive pipeline: what a take-home solution to tally's job looks like.

confluent-kafka with the group's auto-commit (at least once at best: an offset
can be committed while its output still waits in the producer's queue, and a
crash replays or loses up to 5 s), one record per poll(), tally's validation
and transform (rules.py), produce + poll(0) per record, in-memory counts lost
on restart. The output keeps the input record's timestamp, as tally does, so
the latency probe measures both the same way.

Stops after --count input records, then flushes and closes (which commits).
"""

import argparse
import signal
import sys
from collections import Counter

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Producer

import rules


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--count", type=int, default=0, help="stop after this many input records (0: never)")
    a = ap.parse_args()
    # SIGTERM stops it like Ctrl+C: flush, then close (which commits).
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "session.timeout.ms": 10000,
    })
    producer = Producer({"bootstrap.servers": a.bootstrap})
    consumer.subscribe([a.input])
    counts = Counter()
    seen = 0

    def send(topic, key, value, ts, headers=None):
        while True:
            try:
                producer.produce(topic, key=key, value=value, timestamp=ts, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    try:
        while not a.count or seen < a.count:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                print(f"seeds: consumer error: {msg.error()}", file=sys.stderr)
                continue
            seen += 1
            kind, ts = msg.timestamp()
            ts_ms = ts if kind != TIMESTAMP_NOT_AVAILABLE else None
            try:
                event = rules.validate(msg.value(), ts_ms)
            except rules.Rejected as r:
                send(a.dlq, msg.key(), msg.value(), ts_ms or 0,
                     rules.dlq_headers(r.reason, str(r), msg.topic(), msg.partition(), msg.offset()))
                continue
            counts.update(rules.count_keys(event))
            value = rules.transform(event, msg.topic(), msg.partition(), msg.offset())
            send(a.output, event["user_id"].encode(), value, ts_ms or 0)
    except KeyboardInterrupt:
        pass
    finally:
        left = producer.flush(60)
        consumer.close()  # commits the offsets auto-commit stored
    print(f"seeds: consumed {seen}, {len(counts)} counters, unflushed {left}", file=sys.stderr)
    sys.exit(1 if left else 0)


if __name__ == "__main__":
    main()
