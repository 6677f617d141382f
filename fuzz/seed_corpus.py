#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the real fixtures in
tests/fixtures/. Python 3 standard library only; deterministic. Run from anywhere:

    python3 fuzz/seed_corpus.py

The seeds only start the fuzzer off; what it keeps after `cargo fuzz cmin` is copied into
tests/fixtures/fuzz/<target>/ (see README.md, "Fuzzing").
"""

import hashlib
import json
import pathlib
import re
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    # Named by content, as libFuzzer names what it finds.
    (out / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)


def api_records():
    """Every API record in the fixtures, as parsed JSON."""
    records = json.loads((FIXTURES / "api" / "questions.json").read_text("utf-8"))
    for name in ("correction.json", "holding.json", "withdrawn.json"):
        records += json.loads((FIXTURES / "api" / name).read_text("utf-8"))
    return records


def text_seeds():
    sample = (FIXTURES / "written-answers-sample.txt").read_bytes()
    write("text_parser", sample)
    # Each record alone, so that mutations of a small record are cheap.
    starts = [m.start() for m in re.finditer(rb"(?m)^Asked by:", sample)]
    for start, end in zip(starts, starts[1:] + [len(sample)]):
        write("text_parser", sample[start:end])
    for name in ("near-duplicates.txt", "figures.txt"):
        write("text_parser", (FIXTURES / "flags" / name).read_bytes())


def html_seeds():
    for record in api_records():
        for field in ("answerText", "originalAnswerText"):
            if record.get(field):
                write("html_answer", record[field])


def api_seeds():
    for path in sorted((FIXTURES / "api").glob("*.json")):
        write("api_decode", path.read_bytes())
    write("api_decode", (FIXTURES / "api" / "questions.jsonl").read_bytes())
    for record in api_records():
        single = json.dumps({"value": record, "links": []}, ensure_ascii=False)
        write("api_decode", single)
        page = json.dumps(
            {"results": [{"value": record, "links": []}], "totalResults": 1},
            ensure_ascii=False,
        )
        write("api_decode", page)
    # A body cut off in transit (a truncated page) and an error page (a malformed one).
    write("api_decode", page[: len(page) // 2])
    write("api_decode", "<html>Service Unavailable</html>")


def event_seeds():
    lines = (FIXTURES / "events" / "schema-v1.jsonl").read_bytes().split(b"\n")
    for line in filter(None, lines):
        # As log.rs stores an event: frame version 1, CRC-32 (big-endian) of the JSON, the JSON.
        write("event_decode", b"\x01" + struct.pack(">I", zlib.crc32(line)) + line)
        # Frame version 2: the same CRC-32, the JSON's length (u32, big-endian), then an LZ4
        # block. The standard library has no LZ4, so the block is the format's all-literals
        # form (valid, not smaller); the target compresses each input itself as well.
        write(
            "event_decode",
            b"\x02"
            + struct.pack(">I", zlib.crc32(line))
            + struct.pack(">I", len(line))
            + lz4_literal_block(line),
        )


def lz4_literal_block(data):
    """An LZ4 block of one sequence holding `data` as literals (no matches)."""
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    out = bytearray([0xF0])
    rest = n - 15
    while rest >= 255:
        out.append(255)
        rest -= 255
    out.append(rest)
    return bytes(out) + data


if __name__ == "__main__":
    text_seeds()
    html_seeds()
    api_seeds()
    event_seeds()
    for target in sorted(CORPUS.iterdir()):
        files = list(target.iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"{target.name}: {len(files)} files, {size} bytes")
