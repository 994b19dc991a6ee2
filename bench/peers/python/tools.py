#!/usr/bin/env python3
"""What bench/peers/run.sh asks of Kafka, the same way for every system.

  count --topic T           data records a read_committed reader sees on T (to each
                            partition's end; aborted records and markers not counted)
  committed --topic T --group G
                            the sum of G's committed offsets on T
  topics --contains S       the names of the topics whose name contains S
  wait-group --group G [--topic T]
                            waits until G is Stable with every partition of T assigned
"""

import argparse
import sys
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient


def count(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": f"peers-count-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    })
    md = c.list_topics(a.topic, timeout=10).topics.get(a.topic)
    if md is None or md.error is not None:
        sys.exit(f"count: topic {a.topic} missing")
    parts = sorted(md.partitions)
    ends = {}
    for p in parts:
        _, hi = c.get_watermark_offsets(TopicPartition(a.topic, p), timeout=10)
        ends[p] = hi
    c.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in parts if ends[p] > 0])
    eof = {p for p in parts if ends[p] == 0}
    n = 0
    deadline = time.time() + a.timeout
    while len(eof) < len(parts):
        if time.time() > deadline:
            sys.exit(f"count {a.topic}: timeout after {n} records")
        for m in c.consume(10000, timeout=0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                sys.exit(f"count {a.topic}: {m.error()}")
            n += 1
    c.close()
    print(n)


def committed(a):
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "enable.auto.commit": False})
    md = c.list_topics(a.topic, timeout=10).topics[a.topic]
    tps = c.committed([TopicPartition(a.topic, p) for p in md.partitions], timeout=10)
    c.close()
    print(sum(tp.offset for tp in tps if tp.offset >= 0))


def topics(a):
    adm = AdminClient({"bootstrap.servers": a.bootstrap})
    for name in sorted(adm.list_topics(timeout=10).topics):
        if a.contains in name:
            print(name)


def wait_group(a):
    adm = AdminClient({"bootstrap.servers": a.bootstrap})
    want = len(adm.list_topics(a.topic, timeout=10).topics[a.topic].partitions)
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            g = adm.describe_consumer_groups([a.group])[a.group].result(timeout=5)
            assigned = sum(len(m.assignment.topic_partitions) for m in g.members if m.assignment)
            if g.state == ConsumerGroupState.STABLE and assigned >= want:
                return
        except Exception:  # the group does not exist yet
            pass
        time.sleep(0.2)
    sys.exit(f"wait-group: {a.group} not stable with {want} partitions after {a.timeout} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("count")
    p.add_argument("--topic", required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(f=count)
    p = sub.add_parser("committed")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.set_defaults(f=committed)
    p = sub.add_parser("topics")
    p.add_argument("--contains", required=True)
    p.set_defaults(f=topics)
    p = sub.add_parser("wait-group")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(f=wait_group)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
