"""Labelled questions, as hit testing and calibration read them: a question and the entry (or
category) that should answer it, or an out-of-scope label."""

from __future__ import annotations

from pathlib import Path

from kb.importing import read_table

OUT_OF_SCOPE_LABELS = {"oos", "out_of_scope", "out-of-scope", "none"}


def is_out_of_scope(row: dict) -> bool:
    """A labelled row whose expected entry/category says "out of scope" (oos, none, ...)."""
    label = str(row.get("expected") or row.get("category") or "").strip().casefold()
    return label in OUT_OF_SCOPE_LABELS


def read_labelled_rows(name: str, raw: bytes) -> list[dict]:
    """Rows of a labelled question file (.csv, .json or .xlsx), without the import's grouping."""
    return read_table(name, raw)[1]


def labelled_rows_read(path: Path) -> list[dict]:
    """Labelled questions from a .csv/.json/.xlsx file (columns ``question`` or ``text``, and
    ``expected`` or ``category``), or from a folder in the DNNC layout that BANKING77-OOS uses
    (``seq.in`` and ``label``, one question and its intent a line; label ``oos`` = out of scope)."""
    if path.is_dir():
        questions = (path / "seq.in").read_text(encoding="utf-8").splitlines()
        labels = (path / "label").read_text(encoding="utf-8").splitlines()
        if len(questions) != len(labels):
            raise ValueError(f"{path}: seq.in has {len(questions)} lines but label has {len(labels)}")
        return [{"question": q, "category": label} for q, label in zip(questions, labels, strict=True)]
    return read_labelled_rows(path.name, path.read_bytes())
