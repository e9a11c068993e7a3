"""`m3pipe eval`: retrieval quality of a search's runs against relevance judgements.

The measures come from `ir_measures` (which runs trec_eval through pytrec_eval): nDCG@10,
R@100 and RR@10 (MRR@10 once averaged). Each run is ranked exactly as `m3pipe search`
ranked it (its `rank` column, not a re-sort of its scores). A judged query (one with a
relevant document) that a run has no results for counts 0 in that run's mean, so runs are
compared over the same queries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import ir_measures
import pyarrow.parquet as pq
from ir_measures import RR, R, nDCG

from pipeline.errors import InputError
from pipeline.storage.location import Location, open_location

MEASURES = (nDCG @ 10, R @ 100, RR @ 10)
MAX_BAD_LINES = 5
# trec_eval (pytrec_eval) holds a relevance in a C int: a larger one is refused as a bad
# line here rather than a SystemError there.
RELEVANCE_LIMIT = 2**31 - 1


class EvalError(InputError):
    """Judgements or results that cannot be read."""


@dataclass
class Evaluation:
    queries: int  # judged queries: those with at least one relevant document
    runs: dict[str, dict[str, float]]  # run -> measure name -> mean over judged queries
    # run -> judged queries it has no results for (each scored 0 in the means)
    unanswered: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"queries": self.queries, "measures": [str(m) for m in MEASURES],
                "runs": self.runs, "unanswered": self.unanswered}  # fmt: skip

    def table(self) -> str:
        names = [str(measure) for measure in MEASURES]
        width = max([len("run"), *(len(run) for run in self.runs)])
        lines = [f"{'run':<{width}}  " + "  ".join(f"{name:>8}" for name in names)]
        for run, values in self.runs.items():
            lines.append(f"{run:<{width}}  " + "  ".join(f"{values[n]:8.4f}" for n in names))
        lines.append(f"({self.queries} judged queries)")
        for run, missing in self.unanswered.items():
            if missing:
                lines.append(
                    f"(run {run}: no results for {missing} of the judged queries, each scored 0)"
                )
        return "\n".join(lines)


def read_qrels(target: Location | Path | str) -> list[ir_measures.Qrel]:
    """TREC qrels (`query_id iteration doc_id relevance` per line) or, for a .jsonl file,
    objects with query_id, doc_id and relevance."""
    location = open_location(target)
    try:
        text = location.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {location}: {exc}") from exc
    parse = _jsonl_qrel if location.name.endswith(".jsonl") else _trec_qrel
    qrels, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            qrels.append(parse(line))
        except (ValueError, KeyError, TypeError) as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        shown = "; ".join(bad[:MAX_BAD_LINES])
        raise EvalError(f"{location}: {len(bad)} bad judgement line(s): {shown}")
    if not qrels:
        raise EvalError(f"{location} holds no judgements")
    return _without_duplicates(qrels, location)


def _without_duplicates(
    qrels: list[ir_measures.Qrel], location: Location
) -> list[ir_measures.Qrel]:
    """Each (query, document) judged once: repeats of the same grade are dropped, two
    different grades for one pair are refused (which one counts would be a guess)."""
    graded: dict[tuple[str, str], int] = {}
    kept, conflicts = [], []
    for qrel in qrels:
        pair = (qrel.query_id, qrel.doc_id)
        if pair not in graded:
            graded[pair] = qrel.relevance
            kept.append(qrel)
        elif graded[pair] != qrel.relevance:
            conflicts.append(f"query {pair[0]} doc {pair[1]}: {graded[pair]} and {qrel.relevance}")
    if conflicts:
        shown = "; ".join(conflicts[:MAX_BAD_LINES])
        raise EvalError(
            f"{location}: {len(conflicts)} (query, document) pair(s) judged twice with "
            f"different relevance: {shown}"
        )
    return kept


def _trec_qrel(line: str) -> ir_measures.Qrel:
    parts = line.split()
    if len(parts) != 4:
        raise ValueError(f"expected 4 fields (query, iteration, doc, relevance), got {len(parts)}")
    return ir_measures.Qrel(parts[0], parts[2], _relevance(int(parts[3])))


def _jsonl_qrel(line: str) -> ir_measures.Qrel:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    relevance = record["relevance"]
    if not isinstance(relevance, int) or isinstance(relevance, bool):
        raise ValueError("relevance must be an integer")
    return ir_measures.Qrel(str(record["query_id"]), str(record["doc_id"]), _relevance(relevance))


def _relevance(value: int) -> int:
    if not -RELEVANCE_LIMIT <= value <= RELEVANCE_LIMIT:
        raise ValueError(f"relevance {value} is out of range (at most {RELEVANCE_LIMIT})")
    return value


def read_runs(target: Location | Path | str) -> dict[str, list[ir_measures.ScoredDoc]]:
    """The results of `m3pipe search`, per run; the score given to trec_eval is -rank."""
    location = open_location(target)
    try:
        table = pq.read_table(location.path, filesystem=location.fs,
                              columns=["run", "query_id", "doc_id", "rank"])  # fmt: skip
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"{location} is not a results file of `m3pipe search`: {exc}") from exc
    runs: dict[str, list[ir_measures.ScoredDoc]] = defaultdict(list)
    for run, query, doc, rank in zip(*(table.column(c).to_pylist() for c in table.column_names),
                                     strict=True):  # fmt: skip
        runs[run].append(ir_measures.ScoredDoc(query, doc, -float(rank)))
    return dict(runs)


def evaluate(
    qrels: list[ir_measures.Qrel], runs: dict[str, list[ir_measures.ScoredDoc]]
) -> Evaluation:
    judged = sorted({q.query_id for q in qrels if q.relevance > 0})
    means: dict[str, dict[str, float]] = {}
    unanswered: dict[str, int] = {}
    for run, scored in runs.items():
        answered = {doc.query_id for doc in scored}
        unanswered[run] = sum(1 for query in judged if query not in answered)
        per_query: dict[str, dict[str, float]] = defaultdict(dict)
        for metric in ir_measures.iter_calc(MEASURES, qrels, scored):
            per_query[str(metric.measure)][metric.query_id] = metric.value
        means[run] = {
            str(measure): sum(per_query[str(measure)].get(q, 0.0) for q in judged) / len(judged)
            if judged
            else 0.0
            for measure in MEASURES
        }
    return Evaluation(queries=len(judged), runs=means, unanswered=unanswered)
