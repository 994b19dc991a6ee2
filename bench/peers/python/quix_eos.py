#!/usr/bin/env python3
"""Quix Streams, exactly once: tally's job with Quix's RocksDB state and changelog.

input (bytes) -> classify (rules.py) -> two branches
  valid:   a stateful apply counts by device type, app version, locale and
           minute, per input partition, then the transformed JSON goes to the
           output topic keyed by user_id
  invalid: the original bytes go to the DLQ with tally's reason headers
processing_guarantee="exactly-once": one transactional producer; every checkpoint
(commit_interval) flushes outputs and changelog and commits the input offsets
in one Kafka transaction, then flushes RocksDB.

Quix's public State is scoped by the message key (here user_id, so per-user
counters); to count per partition as tally does, the callback uses the store
transaction under it with a fixed prefix (`state._transaction.as_state`), a
private attribute of Quix 3.28.

Stops after --count input records (app.stop() commits the last checkpoint).
"""

import argparse
import sys

from quixstreams import Application, message_context

import rules


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--count", type=int, default=0, help="stop after this many input records (0: never)")
    ap.add_argument("--commit-interval", type=float, default=0.1,
                    help="seconds between checkpoints; Quix's default is 5.0, tally's 0.1")
    a = ap.parse_args()

    seen = 0

    def on_processed(topic, partition, offset):
        nonlocal seen
        seen += 1
        if a.count and seen >= a.count:
            app.stop()

    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=a.commit_interval,
        state_dir=a.state_dir,
        on_message_processed=on_processed,
        consumer_extra_config={"session.timeout.ms": 10000},
        loglevel="WARNING",
    )
    inp = app.topic(a.input, key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(a.output, key_serializer="bytes", value_serializer="bytes")
    dlq = app.topic(a.dlq, key_serializer="bytes", value_serializer="bytes")

    def classify(value, key, timestamp, headers):
        try:
            return {"event": rules.validate(value, timestamp), "raw": value}
        except rules.Rejected as r:
            # Plain strings: Quix copies rows between branches by pickling them.
            return {"reason": r.reason, "message": str(r), "raw": value}

    # The output key is the event's user_id; Quix's to_topic(key=...) sees only the
    # value (the serialised output), so the key of the record being processed is
    # kept here (one record at a time goes through the dataframe).
    current_key = [b""]

    def count_and_transform(row, state):
        agg = state._transaction.as_state(prefix=b"agg")
        event = row["event"]
        for k in rules.count_keys(event):
            agg.set(k, agg.get(k, 0) + 1)
        ctx = message_context()
        current_key[0] = event["user_id"].encode()
        return rules.transform(event, ctx.topic, ctx.partition, ctx.offset)

    def reject_headers(row, key, timestamp, headers):
        ctx = message_context()
        return rules.dlq_headers(row["reason"], row["message"], ctx.topic, ctx.partition, ctx.offset)

    sdf = app.dataframe(inp)
    sdf = sdf.apply(classify, metadata=True)
    good = sdf.filter(lambda r: "event" in r)
    bad = sdf.filter(lambda r: "reason" in r)
    good = good.apply(count_and_transform, stateful=True)
    good.to_topic(out, key=lambda _value: current_key[0])
    bad = bad.set_headers(reject_headers)
    bad = bad.apply(lambda r: r["raw"])
    bad.to_topic(dlq)

    app.run()
    print(f"quix: consumed {seen}", file=sys.stderr)
    sys.exit(0 if (not a.count or seen >= a.count) else 2)


if __name__ == "__main__":
    main()
