#!/usr/bin/env python3
"""A Kafka-protocol proxy that makes the local test broker honour fetch size limits.

The test broker (noida-db 0.2.3) answers every fetch with everything it has from
the fetch offset on, ignoring the request's `max_bytes` and each partition's
`partition_max_bytes`; Apache Kafka honours both. A consumer's memory on a backlog
therefore follows the backlog on the test broker only (README, Known limits). To
measure what it is against a broker that honours the limits, this proxy forwards
every request unchanged and cuts each Fetch response down the way Kafka would
(KIP-74): whole record batches, a partition's batches up to its `partition_max_bytes`,
the response's up to `max_bytes`, but always at least the first batch of the first
partition that has one, so a record larger than the limits still comes through.
Kafka may also return a partial last batch; this proxy never does (clients accept
both). Everything else in the response (high watermark, last stable offset, aborted
transactions, errors) is passed on as it came.

The broker advertises its own address in Metadata and FindCoordinator answers;
the proxy rewrites that port to its own so clients stay on the proxy.

  scripts/fetch-limit-proxy.py LISTEN_PORT BROKER_PORT

Listens on 127.0.0.1 only. A measurement aid for scripts/rss.sh and
scripts/bench.sh (FETCH_LIMITS=1), not part of tally. Not rewritten: the
NodeEndpoints tag of Fetch v16 and Produce v10+ responses (sent only when the
leader moved, which a single local broker never does). Cut fetches mean more
read_committed fetches that start mid-log, which meet the local broker's quirk
with aborted transactions (README, Known limits) more often.
"""

import asyncio
import struct
import sys

FETCH, METADATA, FIND_COORDINATOR = 1, 3, 10
HOST = b"127.0.0.1"


class Reader:
    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def take(self, n):
        b = self.buf[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated message")
        self.pos += n
        return b

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def uvarint(self):
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    def length(self, flexible, wide=False):
        """An array's or a string's length (-1: null)."""
        if flexible:
            return self.uvarint() - 1
        return self.i32() if wide else self.i16()

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fetch_limits(req):
    """(api_version, max_bytes, {(topic key, partition): partition_max_bytes})."""
    r = Reader(req)
    r.i16()
    version = r.i16()
    r.i32()  # correlation id
    n = r.i16()  # client id: a non-compact nullable string in every header version
    if n > 0:
        r.take(n)
    flexible = version >= 12
    if flexible:
        r.skip_tags()
    if version <= 14:
        r.i32()  # replica id
    r.i32()  # max wait
    r.i32()  # min bytes
    max_bytes = r.i32() if version >= 3 else 1 << 31
    if version >= 4:
        r.take(1)  # isolation level
    if version >= 7:
        r.i32()  # session id
        r.i32()  # session epoch
    limits = {}
    for _ in range(r.length(flexible, wide=True)):
        if version >= 13:
            topic = r.take(16)
        else:
            topic = r.take(r.length(flexible))
        for _ in range(r.length(flexible, wide=True)):
            partition = r.i32()
            if version >= 9:
                r.i32()  # current leader epoch
            r.i64()  # fetch offset
            if version >= 12:
                r.i32()  # last fetched epoch
            if version >= 5:
                r.i64()  # log start offset
            limits[(topic, partition)] = r.i32()
            if flexible:
                r.skip_tags()
        if flexible:
            r.skip_tags()
    return version, max_bytes, limits


def cut_records(records, limit, budget, must_give):
    """Whole batches of `records` within `limit` and `budget` (at least one when
    `must_give`): the kept bytes."""
    kept = 0
    while kept + 12 <= len(records):
        size = 12 + struct.unpack(">i", records[kept + 8:kept + 12])[0]
        if size <= 12 or kept + size > len(records):
            break  # a partial or malformed batch: pass the rest on as it came
        if kept + size > min(limit, budget) and not (must_give and kept == 0):
            return records[:kept]
        kept += size
    return records


def cut_fetch_response(resp, version, max_bytes, limits):
    """The Fetch response `resp` (after the correlation id) cut to the limits."""
    flexible = version >= 12
    r = Reader(resp)
    out = bytearray()
    start = 0

    def copy_to_here():
        nonlocal start
        out.extend(resp[start:r.pos])
        start = r.pos

    if flexible:
        r.skip_tags()  # response header tags
    if version >= 1:
        r.i32()  # throttle
    if version >= 7:
        r.i16()
        r.i32()
    budget, given = max_bytes, False
    for _ in range(r.length(flexible, wide=True)):
        topic = r.take(16) if version >= 13 else r.take(r.length(flexible))
        for _ in range(r.length(flexible, wide=True)):
            partition = r.i32()
            r.i16()
            r.i64()
            if version >= 4:
                r.i64()
            if version >= 5:
                r.i64()
            if version >= 4:
                for _ in range(r.length(flexible, wide=True)):
                    r.i64()
                    r.i64()
                    if flexible:
                        r.skip_tags()
            if version >= 11:
                r.i32()
            copy_to_here()
            n = r.length(flexible, wide=True)
            records = r.take(n) if n > 0 else b""
            start = r.pos
            if n < 0:
                out.extend(uvarint(0) if flexible else struct.pack(">i", -1))
                if flexible:
                    r.skip_tags()
                continue
            limit = limits.get((topic, partition), 1 << 31)
            kept = cut_records(records, limit, budget, not given)
            if kept:
                given = True
            budget -= len(kept)
            out.extend(uvarint(len(kept) + 1) if flexible else struct.pack(">i", len(kept)))
            out.extend(kept)
            if flexible:
                r.skip_tags()
        if flexible:
            r.skip_tags()
    r.pos = len(resp)
    copy_to_here()
    return bytes(out)


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def frame(body):
    return struct.pack(">i", len(body)) + body


async def serve(client_r, client_w, broker_port, listen_port):
    broker_r, broker_w = await asyncio.open_connection("127.0.0.1", broker_port)
    pending = asyncio.Queue()  # (correlation id, api key, fetch limits) in request order
    own, theirs = struct.pack(">i", listen_port), struct.pack(">i", broker_port)

    async def requests():
        while True:
            req = await read_frame(client_r)
            api, version, corr = struct.unpack(">hhi", req[:8])
            limits = fetch_limits(req) if api == FETCH else None
            await pending.put((corr, api, limits))
            broker_w.write(frame(req))
            await broker_w.drain()

    async def responses():
        while True:
            resp = await read_frame(broker_r)
            corr = struct.unpack(">i", resp[:4])[0]
            want, api, limits = await pending.get()
            if corr != want:
                raise ValueError(f"response {corr} out of order (expected {want})")
            if api == FETCH:
                version, max_bytes, per_partition = limits
                resp = resp[:4] + cut_fetch_response(resp[4:], version, max_bytes, per_partition)
            elif api in (METADATA, FIND_COORDINATOR):
                resp = resp.replace(HOST + theirs, HOST + own)
            client_w.write(frame(resp))
            await client_w.drain()

    tasks = [asyncio.create_task(requests()), asyncio.create_task(responses())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for w in (client_w, broker_w):
            w.close()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError):
                pass
            except Exception as e:  # a parse error: say so, drop the connection
                print(f"fetch-limit-proxy: {e!r}", file=sys.stderr)


async def main():
    listen_port, broker_port = int(sys.argv[1]), int(sys.argv[2])
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, broker_port, listen_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
