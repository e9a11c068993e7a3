"""Rerank input: (query, passage) pairs, one per record or a query with its candidates.

Two record layouts, in JSONL, CSV or Parquet (CSV holds the flat one only):

    {"query_id": "q1", "query": "...", "doc_id": "d7", "passage": "..."}
    {"query_id": "q1", "query": "...", "candidates": [{"doc_id": "d7", "passage": "..."}, ...]}

A candidates record's pairs are ranked together. Records are counted in pairs: a bad
candidate is one reject, and a record whose query is bad rejects each of its candidates, so
that pairs read = pairs scored + pairs rejected. A record that holds no pair at all (not an
object, no candidates list) is one reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pipeline.inputs.validate import require_columns, type_name
from schemas.document import MAX_ID_CHARS, Origin, Reject, unicode_problem
from schemas.pair import Pair, plain_text

FLAT = ("query_id", "query", "doc_id", "passage")
GROUPED = ("query_id", "query", "candidates")


@dataclass
class PairRecord:
    """One input record's pairs, and the rejects of its candidates that are not pairs."""

    pairs: list[Pair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    grouped: bool = False  # came as one query's candidates: ranked together


def _check_id(value: object, name: str) -> str | None:
    """Why `value` is not a usable id, or None."""
    if not isinstance(value, str):
        return f"{name} must be a string, got {type_name(value)}"
    if not value:
        return f"{name} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{name} is longer than {MAX_ID_CHARS} characters"
    return unicode_problem(value, name)


def _check_text(value: object, name: str) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type_name(value)}"
    try:
        plain_text(value, name)
    except ValueError as exc:
        return str(exc)
    return None


class PairShape:
    """The RecordShape of rerank input (see pipeline/inputs/validate.py)."""

    def columns(self, available: Sequence[str], source: str) -> list[str]:
        wanted = GROUPED if "candidates" in available else FLAT
        hint = "rerank input has query_id, query, doc_id, passage (or candidates) columns"
        return require_columns(wanted, available, source, hint)

    def id_columns(self) -> tuple[str, ...]:
        return ("query_id", "doc_id")

    def convert(
        self,
        record: Any,
        *,
        source: str,
        line: int | None = None,
        row: int | None = None,
        origin: Origin | None = None,  # pairs always travel inline
    ) -> PairRecord | Reject:
        def reject(reason: str, doc_id: object = None, query_id: object = None) -> Reject:
            return Reject(
                source=source,
                line=line,
                row=row,
                id=doc_id if isinstance(doc_id, str) else None,
                query_id=query_id if isinstance(query_id, str) else None,
                reason=reason,
            )

        if not isinstance(record, dict):
            return reject(f"record is a JSON {type_name(record)}, expected an object")
        query_id, query = record.get("query_id"), record.get("query")
        if "candidates" in record:
            candidates = record["candidates"]
            if not isinstance(candidates, list) or not candidates:
                return reject("candidates must be a non-empty list", query_id=query_id)
            items = [c if isinstance(c, dict) else {"_bad": c} for c in candidates]
            grouped = True
        else:
            items = [record]
            grouped = False
        query_problem = _check_id(query_id, "query_id") or _check_text(query, "query")
        out = PairRecord(grouped=grouped)
        for position, item in enumerate(items):
            doc_id, passage = item.get("doc_id"), item.get("passage")
            where = f"candidate {position}: " if grouped else ""
            problem = query_problem
            if problem is None and "_bad" in item:
                problem = f"{where}is a {type_name(item['_bad'])}, expected an object"
            elif problem is None:
                problem = _check_id(doc_id, "doc_id") or _check_text(passage, "passage")
                problem = problem and where + problem
            if problem is None:
                try:
                    fields = {"query_id": query_id, "query": query}
                    out.pairs.append(
                        Pair.model_validate({**fields, "doc_id": doc_id, "passage": passage})
                    )
                    continue
                except ValidationError as exc:
                    problem = where + "; ".join(
                        err["msg"].removeprefix("Value error, ") for err in exc.errors()
                    )
            out.rejects.append(reject(problem, doc_id, query_id))
        return out
