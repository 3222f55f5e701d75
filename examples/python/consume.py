#!/usr/bin/env python3
"""A downstream consumer of millilag's Kafka topics, in Python: prints every record as one
JSON line.

    pip install fastavro confluent-kafka
    python3 examples/python/consume.py --brokers localhost:29092 \\
        --topic millilag.delay-window --topic millilag.alert [--from-beginning]

Records are Avro single-object encoded: the bytes C3 01, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form, then the Avro datum. The schemas are
the .avsc files in schemas/ (current) and schemas/history/ (every earlier published version):
the fingerprint picks the writer schema, and the datum is resolved to the current version of
the same record, so records written by an older millilag decode with new fields at their
defaults. No schema registry is involved (the Confluent wire format is not offered).

Each output line: {"topic", "partition", "offset", "key", "schema", "value"}. A record that does
not decode is reported on stderr and skipped. Stops after --max records, after --idle seconds
without a record, or on Ctrl-C.
"""

import argparse
import glob
import io
import json
import os
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from confluent_kafka import Consumer, KafkaError

MAGIC = b"\xc3\x01"
HEADER_LEN = 10


def load_schemas(schema_dir):
    """fingerprint bytes (as on the wire) -> (writer schema, reader schema, full name)."""

    def read(path):
        with open(path, encoding="utf-8") as f:
            return parse_schema(json.load(f))

    current = {}
    for path in sorted(glob.glob(os.path.join(schema_dir, "*.avsc"))):
        s = read(path)
        current[s["name"]] = s
    known = {}
    paths = glob.glob(os.path.join(schema_dir, "*.avsc"))
    paths += glob.glob(os.path.join(schema_dir, "history", "*.avsc"))
    for path in sorted(paths):
        writer = read(path)
        name = writer["name"]
        if name not in current:
            raise SystemExit(f"{path}: {name} has no current version in {schema_dir}")
        # fastavro's hex digest lists the bytes in the wire's (little-endian) order.
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(writer), "CRC-64-AVRO"))
        known[fp] = (writer, current[name], name)
    return known


def decode(value, known):
    """(schema name, record) of one single-object encoded value; ValueError if it is not one."""
    if value is None or len(value) < HEADER_LEN or value[:2] != MAGIC:
        raise ValueError("not Avro single-object encoding (expected C3 01 and a fingerprint)")
    fp = value[2:HEADER_LEN]
    if fp not in known:
        raise ValueError(f"unknown schema fingerprint {fp.hex()} (a newer millilag? update schemas/)")
    writer, reader, name = known[fp]
    body = io.BytesIO(value[HEADER_LEN:])
    record = fastavro.schemaless_reader(body, writer, reader)
    if body.read(1):
        raise ValueError(f"{name}: bytes left after the record")
    return name, record


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    p.add_argument("--topic", action="append", required=True, help="a topic (repeat for more)")
    p.add_argument("--group", default="millilag-python-example", help="consumer group")
    p.add_argument("--from-beginning", action="store_true", help="read from the earliest offset when the group has none")
    p.add_argument("--schemas", default=os.path.join(here, "..", "..", "schemas"), help="the schemas/ folder")
    p.add_argument("--max", type=int, default=0, help="stop after this many records (0: never)")
    p.add_argument("--idle", type=float, default=0, help="stop after this many seconds without a record (0: never)")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE", help="librdkafka property (TLS, SASL)")
    args = p.parse_args()

    known = load_schemas(args.schemas)
    conf = {
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": True,
    }
    for kv in args.property:
        k, _, v = kv.partition("=")
        conf[k] = v
    consumer = Consumer(conf)
    consumer.subscribe(args.topic)
    seen = 0
    idle = 0.0
    try:
        while args.max == 0 or seen < args.max:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if args.idle and idle >= args.idle:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"kafka: {msg.error()}", file=sys.stderr)
                continue
            idle = 0.0
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            try:
                name, record = decode(msg.value(), known)
            except (ValueError, EOFError, StopIteration) as e:
                print(f"skipping {where}: {e}", file=sys.stderr)
                continue
            key = msg.key()
            line = {
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": key.decode("utf-8", "replace") if key is not None else None,
                "schema": name,
                "value": record,
            }
            # Bytes (dead-letter payloads) as hex: JSON has no bytes.
            print(json.dumps(line, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)), flush=True)
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
