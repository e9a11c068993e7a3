"""Document.trusted, the reader's unvalidated constructor, makes what validation makes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.document import Document, Origin, storable, unicode_problem


@given(
    doc_id=st.text(min_size=1, max_size=20).filter(storable),
    text=st.text(min_size=1).filter(lambda t: storable(t) and t.strip()),
    line=st.integers(min_value=1),
)
def test_trusted_equals_validated(doc_id, text, line):
    origin = Origin("file:///x.jsonl", line, 0, 10)
    validated = Document(id=doc_id, text=text, fields=None, origin=origin)
    trusted = Document.trusted(doc_id, text, origin)
    assert trusted == validated
    assert trusted.model_dump() == validated.model_dump()
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert trusted.model_fields_set == validated.model_fields_set
    assert trusted.model_copy(update={"text": "t"}) == validated.model_copy(update={"text": "t"})


@given(st.text())
def test_storable_agrees_with_unicode_problem(value):
    assert storable(value) == (unicode_problem(value, "x") is None)
