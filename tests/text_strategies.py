"""Hypothesis strategies shared by the property-based tests (labels, templates, output records)."""

from hypothesis import strategies as st

from clipcli.results import error_record, prediction_record

# Any Unicode text except surrogates (not valid in UTF-8 files) and NUL (csv cannot carry it).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
label_text = text.map(str.strip).filter(bool)

records = st.lists(st.one_of(
    st.builds(lambda p, labels, seed: prediction_record(p, labels, [(seed * (i + 1)) % 1.0 for i in range(len(labels))]),
              text, st.lists(text, min_size=1, max_size=4, unique=True), st.floats(0.01, 0.99)),
    st.builds(error_record, text, st.sampled_from(["truncated", "not_an_image"]), text),
), max_size=5)
