"""The demo's search: case-insensitive substring matching with `field:value` filters.

A real subsystem would use an index; the demo scans its memory, which is enough
to give the gateway real results, facets and suggestions to merge.

Query language: whitespace-separated terms; `field:value` keeps documents whose
field contains value, `-field:value` drops them, anything else is free text that
must appear in the document. Double quotes group words ("connection reset").
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import json_format, timestamp_pb2

from flowwatch_gateway.demo.dataset import to_timestamp
from flowwatch_gateway.gen.flowwatch.v1 import (
    search_service_pb2 as search_pb,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    types_pb2,
)

ENGINE = "demo-substring"
FIELDS: tuple[str, ...] = (
    "run",
    "workflow",
    "status",
    "foreign_id",
    "step",
    "error",
    "level",
    "subsystem",
)
DEFAULT_SUGGESTIONS = 10
MAX_SUGGESTIONS = 100
FRAGMENT_CHARS = 120


class QuerySyntaxError(ValueError):
    """A query the parser cannot read; the message says what to fix."""


@dataclass(frozen=True)
class Filter:
    field: str
    value: str
    negated: bool


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...]
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Corpus:
    runs: Sequence[types_pb2.Run]
    steps: Mapping[str, Sequence[types_pb2.StepExecution]]
    logs: Mapping[str, Sequence[types_pb2.LogEntry]]


def _tokens(raw: str) -> list[str]:
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    for char in raw:
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if quoted:
        raise QuerySyntaxError('unbalanced double quote: close every " you open')
    if current:
        tokens.append("".join(current))
    return tokens


def parse(raw: str) -> Query:
    """Split a raw query into free-text terms and field filters."""
    terms: list[str] = []
    filters: list[Filter] = []
    for token in _tokens(raw):
        negated = token.startswith("-")
        body = token[1:] if negated else token
        if ":" not in body:
            if negated:
                raise QuerySyntaxError(
                    f"{token!r}: a leading '-' negates a filter; write -field:value"
                )
            terms.append(body.lower())
            continue
        name, value = body.split(":", 1)
        if name not in FIELDS:
            raise QuerySyntaxError(f"unknown field {name!r}; use one of {', '.join(FIELDS)}")
        if not value:
            raise QuerySyntaxError(f"{token!r} has no value; write {name}:value")
        filters.append(Filter(name, value.lower(), negated))
    return Query(tuple(terms), tuple(filters))


def _quoted(value: str) -> str:
    return f'"{value}"' if any(char.isspace() for char in value) else value


def normalized(query: Query) -> str:
    parts = [f"{'-' if f.negated else ''}{f.field}:{_quoted(f.value)}" for f in query.filters]
    parts.extend(_quoted(term) for term in query.terms)
    return " ".join(parts)


def explain(raw: str) -> search_pb.ExplainResponse:
    try:
        query = parse(raw)
    except QuerySyntaxError as error:
        return search_pb.ExplainResponse(valid=False, error=str(error))
    parsed = search_pb.ParsedQuery(free_text=" ".join(query.terms))
    for item in query.filters:
        parsed.filters.add(field=item.field, operator=":", value=item.value, negated=item.negated)
    return search_pb.ExplainResponse(valid=True, parsed=parsed, normalized_query=normalized(query))


@dataclass(frozen=True)
class _Document:
    """One searchable thing: its identity, field values and free-text sections."""

    result_id: str
    kind: search_pb.SearchResultType
    run: types_pb2.Run
    step_name: str
    moment: timestamp_pb2.Timestamp
    fields: Mapping[str, str]
    text: Mapping[str, str]  # highlight name -> searchable text
    error_code: str


def _status(run: types_pb2.Run) -> str:
    return types_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()


def _step_status(execution: types_pb2.StepExecution) -> str:
    return types_pb2.StepStatus.Name(execution.status).removeprefix("STEP_STATUS_").lower()


def _documents(corpus: Corpus, scope: search_pb.SearchScope) -> Iterator[_Document]:
    every = scope in (search_pb.SEARCH_SCOPE_UNSPECIFIED, search_pb.SEARCH_SCOPE_ALL)
    for run in corpus.runs:
        base = {
            "run": run.id,
            "workflow": run.workflow_id,
            "foreign_id": run.foreign_id,
            "subsystem": run.subsystem_id,
        }
        if every or scope == search_pb.SEARCH_SCOPE_RUNS:
            yield _Document(
                run.id,
                search_pb.SEARCH_RESULT_TYPE_RUN,
                run,
                run.current_step,
                run.started_at,
                {**base, "status": _status(run), "error": run.error.message, "step": ""},
                {
                    "id": run.id,
                    "foreign_id": run.foreign_id,
                    "workflow_id": run.workflow_id,
                    "status": _status(run),
                    "error": run.error.message,
                },
                run.error.code,
            )
        for execution in corpus.steps.get(run.id, []):
            moment = execution.started_at if execution.HasField("started_at") else run.started_at
            step_fields = {
                **base,
                "status": _step_status(execution),
                "error": execution.error.message,
                "step": execution.step_name,
            }
            if every or scope == search_pb.SEARCH_SCOPE_STEPS:
                yield _Document(
                    execution.id,
                    search_pb.SEARCH_RESULT_TYPE_STEP,
                    run,
                    execution.step_name,
                    moment,
                    step_fields,
                    {
                        "step_name": execution.step_name,
                        "status": _step_status(execution),
                        "error": execution.error.message,
                    },
                    execution.error.code,
                )
            has_payload = execution.HasField("input") or execution.HasField("output")
            if has_payload and (every or scope == search_pb.SEARCH_SCOPE_PAYLOADS):
                yield _Document(
                    f"{execution.id}/payload",
                    search_pb.SEARCH_RESULT_TYPE_PAYLOAD,
                    run,
                    execution.step_name,
                    moment,
                    step_fields,
                    {
                        "input": json.dumps(json_format.MessageToDict(execution.input)),
                        "output": json.dumps(json_format.MessageToDict(execution.output)),
                    },
                    execution.error.code,
                )
        if every or scope == search_pb.SEARCH_SCOPE_LOGS:
            for entry in corpus.logs.get(run.id, []):
                level = types_pb2.LogLevel.Name(entry.level).removeprefix("LOG_LEVEL_").lower()
                yield _Document(
                    f"{run.id}/log/{entry.line_number}",
                    search_pb.SEARCH_RESULT_TYPE_LOG,
                    run,
                    entry.step_name,
                    entry.timestamp,
                    {**base, "status": _status(run), "step": entry.step_name, "level": level},
                    {"message": entry.message},
                    "",
                )


def _fragment(text: str, term: str) -> str:
    at = text.lower().find(term)
    start = max(0, at - FRAGMENT_CHARS // 2)
    return text[start : start + FRAGMENT_CHARS]


def _score(document: _Document, query: Query) -> tuple[float, dict[str, list[str]]] | None:
    """Match score and highlights, or None when the document does not match."""
    for item in query.filters:
        contains = item.value in document.fields.get(item.field, "").lower()
        if contains == item.negated:
            return None
    highlights: dict[str, list[str]] = {}
    score = 1.0
    for term in query.terms:
        hits = [(name, text) for name, text in document.text.items() if term in text.lower()]
        if not hits:
            return None
        for name, text in hits:
            score += text.lower().count(term)
            highlights.setdefault(name, []).append(_fragment(text, term))
    return score, highlights


def _in_range(moment: timestamp_pb2.Timestamp, time_range: types_pb2.TimeRange) -> bool:
    value = moment.ToNanoseconds()
    if time_range.HasField("from") and value < getattr(time_range, "from").ToNanoseconds():
        return False
    return not (time_range.HasField("to") and value >= time_range.to.ToNanoseconds())


def search(
    corpus: Corpus,
    raw_query: str,
    scope: search_pb.SearchScope,
    time_range: types_pb2.TimeRange,
) -> tuple[list[search_pb.SearchResult], search_pb.SearchFacets, int]:
    """Every matching result (best first), facets over all of them, and the time taken."""
    began = time.perf_counter()
    try:
        query = parse(raw_query)
    except QuerySyntaxError as error:
        raise ConnectError(Code.INVALID_ARGUMENT, f"query: {error}") from None
    scored: list[tuple[float, int, str, search_pb.SearchResult]] = []
    facets = {"status": Counter[str](), "workflow": Counter[str](), "step": Counter[str]()}
    errors = Counter[str]()
    for document in _documents(corpus, scope):
        if not _in_range(document.moment, time_range):
            continue
        match = _score(document, query)
        if match is None:
            continue
        score, highlights = match
        result = search_pb.SearchResult(
            id=document.result_id,
            type=document.kind,
            run_id=document.run.id,
            workflow_id=document.run.workflow_id,
            score=score,
            context=search_pb.SearchResultContext(
                run_status=document.run.status,
                step_name=document.step_name,
                timestamp=document.moment,
                foreign_id=document.run.foreign_id,
            ),
        )
        for name, fragments in highlights.items():
            result.highlights[name].fragments.extend(fragments)
        facets["status"][types_pb2.RunStatus.Name(document.run.status)] += 1
        facets["workflow"][document.run.workflow_id] += 1
        if document.kind != search_pb.SEARCH_RESULT_TYPE_RUN and document.step_name:
            facets["step"][document.step_name] += 1
        if document.error_code:
            errors[document.error_code] += 1
        scored.append((-score, -document.moment.ToNanoseconds(), document.result_id, result))
    scored.sort(key=lambda row: row[:3])
    response_facets = search_pb.SearchFacets(
        status=dict(facets["status"]),
        workflow=dict(facets["workflow"]),
        step=dict(facets["step"]),
        error=dict(errors),
    )
    took_ms = round((time.perf_counter() - began) * 1000)
    return [row[3] for row in scored], response_facets, took_ms


def _field_values(corpus: Corpus, field: str) -> Iterator[str]:
    for run in corpus.runs:
        if field == "step":
            yield from (execution.step_name for execution in corpus.steps.get(run.id, []))
            continue
        if field == "level":
            for entry in corpus.logs.get(run.id, []):
                yield types_pb2.LogLevel.Name(entry.level).removeprefix("LOG_LEVEL_").lower()
            continue
        value = {
            "run": run.id,
            "workflow": run.workflow_id,
            "status": _status(run),
            "foreign_id": run.foreign_id,
            "error": run.error.code,
            "subsystem": run.subsystem_id,
        }[field]
        if value:
            yield value


def suggest(corpus: Corpus, field: str, prefix: str, limit: int) -> list[search_pb.Suggestion]:
    """Values of `field` starting with `prefix` (case-insensitive), most frequent first."""
    if field not in FIELDS:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"field must be one of {', '.join(FIELDS)}; got {field!r}"
        )
    if limit < 0:
        raise ConnectError(Code.INVALID_ARGUMENT, f"limit must not be negative; got {limit}")
    wanted = prefix.lower()
    counts = Counter(
        value for value in _field_values(corpus, field) if value.lower().startswith(wanted)
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    size = min(limit or DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS)
    return [search_pb.Suggestion(value=value, count=count) for value, count in ordered[:size]]


def index_stats(corpus: Corpus, now: datetime) -> search_pb.GetIndexStatsResponse:
    """Sizes of what the scan covers; the demo indexes synchronously, so no lag."""
    steps = [execution for run in corpus.runs for execution in corpus.steps.get(run.id, [])]
    logs = [entry for run in corpus.runs for entry in corpus.logs.get(run.id, [])]
    size = sum(message.ByteSize() for message in (*corpus.runs, *steps, *logs))
    return search_pb.GetIndexStatsResponse(
        indexed_runs=len(corpus.runs),
        indexed_steps=len(steps),
        indexed_log_lines=len(logs),
        index_size_bytes=size,
        ingestion_lag_seconds=0,
        last_indexed_at=to_timestamp(now),
    )
