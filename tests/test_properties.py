"""Property-based tests: label parsing, template rendering and output escaping round-trip any text."""

import csv
import io
import json
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from clipcli.labels import parse_labels
from clipcli.results import CsvWriter, JsonLinesWriter, JsonWriter, error_record, prediction_record, read_csv_records
from clipcli.templates import render_template

# Any Unicode text except surrogates (not valid in UTF-8 files) and NUL (csv cannot carry it).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
label_text = text.map(str.strip).filter(bool)


@settings(max_examples=200, deadline=None)
@given(st.lists(label_text, min_size=1, max_size=8, unique=True))
def test_quoted_labels_parse_back(labels):
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="").writerow(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = [label.name for label in parse_labels(buffer.getvalue())]
    assert parsed == [label.strip() for label in labels]


@settings(max_examples=200, deadline=None)
@given(text, text, text, st.sampled_from(["{}", "{c}"]))
def test_template_rendering_puts_the_label_in_once(prefix, suffix, label, placeholder):
    prefix, suffix = (part.replace("{", "(").replace("}", ")") for part in (prefix, suffix))
    assert render_template(prefix + placeholder + suffix, label) == prefix + label + suffix


records = st.lists(st.one_of(
    st.builds(lambda p, labels, seed: prediction_record(p, labels, [(seed * (i + 1)) % 1.0 for i in range(len(labels))]),
              text, st.lists(text, min_size=1, max_size=4, unique=True), st.floats(0.01, 0.99)),
    st.builds(error_record, text, st.sampled_from(["truncated", "not_an_image"]), text),
), max_size=5)


@settings(max_examples=150, deadline=None)
@given(records)
def test_records_round_trip_through_every_format(items):
    jsonl, document, table = io.StringIO(), io.StringIO(), io.StringIO(newline="")
    writers = [JsonLinesWriter(jsonl), JsonWriter(document, {"labels": ["x"]}), CsvWriter(table)]
    for record in items:
        for writer in writers:
            writer.write(record)
    for writer in writers:
        writer.close()
    assert [json.loads(line) for line in jsonl.getvalue().split("\n") if line] == items
    assert json.loads(document.getvalue())["results"] == items
    assert read_csv_records(table.getvalue()) == items
