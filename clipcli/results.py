"""Result records and their machine-readable forms: JSON, JSON Lines and CSV (stdlib only).

A record is a plain dict, one per input file:
    {"path": ..., "predictions": [{"label": ..., "score": ...}, ...]}   ranked, best first
    {"path": ..., "error": {"type": ..., "message": ...}}                a file that could not be read
A video gives a record for the whole video, then one per shot (see shots), each with the video's path:
    {"path": ..., "start": 0.0, "end": ..., "shots": n, "time": {label: seconds}, "predictions": [...]}
    {"path": ..., "shot": 1, "start": ..., "end": ..., "predictions": [...]}
Writers stream: each record is written as it comes, so a long run can be piped
or interrupted and what was written stays valid.
"""

from __future__ import annotations

import csv
import io
import json
from typing import IO, Sequence

from .fsutil import atomic_output  # noqa: F401 (its home is fsutil: every atomic write is there)

FORMATS = ("table", "json", "jsonl", "csv")
CSV_COLUMNS = ("path", "rank", "label", "score", "error_type", "error_message", "shot", "start", "end")


def prediction_record(path: str, labels: Sequence[str], scores: Sequence[float], extra: dict | None = None) -> dict:
    """An image's predictions, in the order given (ranked by the caller); extra keys (a shot's times) come after
    the path."""
    return {"path": path, **(extra or {}),
            "predictions": [{"label": label, "score": float(score)} for label, score in zip(labels, scores)]}


def error_record(path: str, kind: str, message: str) -> dict:
    return {"path": path, "error": {"type": kind, "message": message}}


def is_error(record: dict) -> bool:
    return "error" in record


def is_shot(record: dict) -> bool:
    """A record of one shot of a video (its video's own record comes before it): sinks that act once per file
    (sort, tag) skip it."""
    return "shot" in record


class JsonLinesWriter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()  # a reader downstream (or a crash) sees every finished record

    def close(self) -> None:
        self.stream.flush()


class JsonWriter:
    """One JSON document: the run's header fields, then "results" streamed record by record."""

    def __init__(self, stream: IO[str], header: dict) -> None:
        self.stream = stream
        head = json.dumps({**header, "results": []}, ensure_ascii=False, indent=2)
        self.stream.write(head[: head.rindex("[") + 1])  # everything up to the open results list
        self.count = 0

    def write(self, record: dict) -> None:
        body = json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n    ")
        self.stream.write(("," if self.count else "") + "\n    " + body)
        self.count += 1

    def close(self) -> None:
        self.stream.write("\n  ]\n}\n" if self.count else "]\n}\n")
        self.stream.flush()


class CsvWriter:
    """path,rank,label,score rows; an unreadable file gives one row with error_type and error_message; a video's
    rows say their shot (empty for the whole video), start and end."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.writer = csv.writer(stream)  # RFC 4180 line ends, so a \r inside a field is quoted too
        self.writer.writerow(CSV_COLUMNS)

    def write(self, record: dict) -> None:
        if is_error(record):
            error = record["error"]
            self.writer.writerow([record["path"], "", "", "", error["type"], error["message"], "", "", ""])
        else:
            span = [record.get("shot", ""), record.get("start", ""), record.get("end", "")]
            for rank, prediction in enumerate(record["predictions"], start=1):
                self.writer.writerow([record["path"], rank, prediction["label"], repr(prediction["score"]), "", "",
                                      *span])
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class DictCsvWriter:
    """Flat records (sort plans) as CSV with fixed columns; missing fields are empty."""

    def __init__(self, stream: IO[str], columns: Sequence[str]) -> None:
        self.stream = stream
        self.writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, record: dict) -> None:
        self.writer.writerow({k: "" if v is None else v for k, v in record.items()})
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def make_writer(fmt: str, stream: IO[str], header: dict | None = None):
    if fmt == "jsonl":
        return JsonLinesWriter(stream)
    if fmt == "json":
        return JsonWriter(stream, header or {})
    if fmt == "csv":
        return CsvWriter(stream)
    raise ValueError(f"no writer for format {fmt!r}")


def read_csv_records(text: str) -> list[dict]:
    """Parse CSV written by CsvWriter back into records (for scripts and tests): rank 1 starts a record."""
    records: list[dict] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if row["error_type"]:
            records.append(error_record(row["path"], row["error_type"], row["error_message"]))
        elif row["rank"] == "1":
            span = {key: (int if key == "shot" else float)(row[key]) for key in ("shot", "start", "end")
                    if row.get(key)}
            records.append({"path": row["path"], **span, "predictions": []})
        if not row["error_type"]:
            records[-1]["predictions"].append({"label": row["label"], "score": float(row["score"])})
    return records
