"""Loader of the Coconut JSON format (facebookresearch/coconut).

A file is a JSON list of objects, each with

    question: str         the prompt
    steps:    list[str]   the reasoning chain, one sentence per step
    answer:   str         the final answer (scored by exact match)

ProsQA rows add the graph fields `idx_to_symbol` (list[str]), `edges` (list of [u, v]),
`root`, `target`, `neg_target` (int); ProntoQA and GSM8k use the base format. Any other
fields are kept in `CoconutExample.extra`. JSON Lines (one object per line) is accepted too.

A corrupt row (not an object, a missing field, a wrong type) is reported by file, row index
and line; with `on_bad_row="skip"` it is skipped and counted, with `"error"` the load fails.
Loading zero rows is an error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Literal

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("question", "steps", "answer")
GRAPH_FIELDS = ("idx_to_symbol", "edges", "root", "target", "neg_target")


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class CoconutExample:
    """One Coconut-format row. `idx` is the row's index in its file."""

    question: str
    steps: tuple[str, ...]
    answer: str
    idx: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The row as a Coconut-format JSON object (extra fields included)."""
        return {"question": self.question, "steps": list(self.steps), "answer": self.answer, **self.extra}


@dataclasses.dataclass
class LoadReport:
    """What a load did: rows read, rows kept, and the messages of skipped rows."""

    path: str
    total: int = 0
    kept: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _iter_rows(text: str, path: str):
    """Yields (row, line) for a JSON array or JSON Lines file."""
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: file is empty; expected a JSON list of {{question, steps, answer}} objects")
    dec = json.JSONDecoder()
    if stripped[0] == "[":
        pos = len(text) - len(stripped) + 1
        n = len(text)

        def skip_ws(p: int) -> int:
            while p < n and text[p] in " \t\r\n":
                p += 1
            return p

        pos = skip_ws(pos)
        if pos < n and text[pos] == "]":
            return
        line, last = 1, 0
        while True:
            pos = skip_ws(pos)
            try:
                row, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix or regenerate the file"
                ) from None
            line += text.count("\n", last, pos)
            last = pos
            yield row, line
            pos = skip_ws(end)
            if pos < n and text[pos] == ",":
                pos += 1
                continue
            if pos < n and text[pos] == "]":
                rest = text[pos + 1 :].strip()
                if rest:
                    raise DataError(f"{path}: unexpected data after the closing ']' at line {_line_of(text, pos)}")
                return
            raise DataError(
                f"{path}: invalid JSON at line {_line_of(text, pos)}: expected ',' or ']' between rows; "
                "fix or regenerate the file"
            )
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), i
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON on line {i} column {e.colno}: {e.msg}") from None


def validate_row(row: Any) -> str | None:
    """None when `row` is a valid Coconut row, else what is wrong with it."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, not an object with question/steps/answer"
    for f in REQUIRED_FIELDS:
        if f not in row:
            return f"missing field {f!r}"
    if not isinstance(row["question"], str):
        return f"'question' must be a string, got {type(row['question']).__name__}"
    if not isinstance(row["answer"], str):
        return f"'answer' must be a string, got {type(row['answer']).__name__}"
    steps = row["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        return "'steps' must be a list of strings"
    if not row["question"].strip():
        return "'question' is empty"
    for f in ("root", "target", "neg_target"):
        if f in row and not (isinstance(row[f], int) and not isinstance(row[f], bool)):
            return f"graph field {f!r} must be an integer"
    if "idx_to_symbol" in row and not (
        isinstance(row["idx_to_symbol"], list) and all(isinstance(s, str) for s in row["idx_to_symbol"])
    ):
        return "graph field 'idx_to_symbol' must be a list of strings"
    if "edges" in row and not (
        isinstance(row["edges"], list)
        and all(isinstance(e, list) and len(e) == 2 and all(isinstance(v, int) for v in e) for e in row["edges"])
    ):
        return "graph field 'edges' must be a list of [u, v] integer pairs"
    return None


def load_coconut_json(
    path: str | os.PathLike,
    on_bad_row: Literal["skip", "error"] = "error",
    max_rows: int | None = None,
    return_report: bool = False,
) -> list[CoconutExample] | tuple[list[CoconutExample], LoadReport]:
    """Reads a Coconut-format JSON (or JSON Lines) file into `CoconutExample`s.

    `idx` is the row's index in the file (skipped rows keep their indices out). With
    `return_report`, also returns a `LoadReport` (rows read / kept / skip messages).
    """
    path = os.fspath(path)
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row={on_bad_row!r}; use 'skip' or 'error'")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file; check the path (generate ProsQA with `python -m latent_jax.data.prosqa --out DIR`)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    report = LoadReport(path=path)
    out: list[CoconutExample] = []
    for i, (row, line) in enumerate(_iter_rows(text, path)):
        if max_rows is not None and i >= max_rows:
            break
        report.total += 1
        problem = validate_row(row)
        if problem is not None:
            msg = f"{path}: row {i} (line {line}): {problem}"
            if on_bad_row == "error":
                raise DataError(msg + "; fix the row, or skip bad rows with on_bad_row='skip' (--config.on_bad_row=skip)")
            report.skipped.append(msg)
            continue
        extra = {k: v for k, v in row.items() if k not in REQUIRED_FIELDS}
        out.append(CoconutExample(row["question"], tuple(row["steps"]), row["answer"], idx=i, extra=extra))
    report.kept = len(out)
    if report.skipped:
        log.warning("%s: skipped %d of %d rows (first: %s)", path, report.num_skipped, report.total, report.skipped[0])
    if not out:
        why = f" ({report.num_skipped} corrupt rows skipped, first: {report.skipped[0]})" if report.skipped else ""
        raise DataError(f"{path}: no usable rows{why}; a Coconut file is a JSON list of {{question, steps, answer}} objects")
    return (out, report) if return_report else out


def save_coconut_json(examples: list[CoconutExample] | list[dict], path: str | os.PathLike) -> None:
    """Writes examples (or row dicts) as a Coconut-format JSON list, atomically."""
    path = os.fspath(path)
    rows = [e.to_json() if isinstance(e, CoconutExample) else dict(e) for e in examples]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
