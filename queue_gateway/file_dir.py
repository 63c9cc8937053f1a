"""The files directory: uploaded files, and each batch's work files, laid out under one operator-set root.

    {root}/files/{file_id}              an uploaded or result file (its record is in Redis)
    {root}/batches/{batch_id}/lines.jsonl  the batch's valid requests, one per line, in input order
    {root}/batches/{batch_id}/invalid.jsonl  error-file lines for the input lines that did not parse
    {root}/batches/{batch_id}/part-{runner}.jsonl  results as each runner recorded them (appended)

Ids are checked against `ID_RE` before they reach a path. With several gateway processes on several
hosts the root must be shared storage: any runner may run a batch's lines or assemble its output.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

from queue_gateway.errors import NotFound

ID_RE = re.compile(r"^(file|batch)-[A-Za-z0-9_-]{1,64}$")


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def checked(value: str, kind: str) -> str:
    """`value` if it is a well-formed id of this kind; else `NotFound` (no such object can exist)."""
    if not ID_RE.match(value) or not value.startswith(kind + "-"):
        raise NotFound(f"No {kind} with id `{value}`.", code=f"{kind}_not_found")
    return value


class FileDir:
    """Paths under the root, and the removal of files that outlived their TTL."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        (self.root / "batches").mkdir(parents=True, exist_ok=True)

    def file(self, fid: str) -> Path:
        return self.root / "files" / checked(fid, "file")

    def upload_tmp(self, fid: str) -> Path:
        return self.root / "files" / f".{checked(fid, 'file')}.part"

    def batch(self, bid: str) -> Path:
        return self.root / "batches" / checked(bid, "batch")

    def lines(self, bid: str) -> Path:
        return self.batch(bid) / "lines.jsonl"

    def invalid(self, bid: str) -> Path:
        return self.batch(bid) / "invalid.jsonl"

    def part(self, bid: str, runner: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", runner)
        return self.batch(bid) / f"part-{safe}.jsonl"

    def parts(self, bid: str) -> list[Path]:
        return sorted(self.batch(bid).glob("part-*.jsonl"))

    def drop_batch(self, bid: str) -> None:
        shutil.rmtree(self.batch(bid), ignore_errors=True)

    def sweep(self, *, ttl_s: float, now_s: float | None = None) -> int:
        """Delete files (and leftover uploads) older than `ttl_s`; returns how many."""
        now = time.time() if now_s is None else now_s
        removed = 0
        folder = self.root / "files"
        if not folder.is_dir():
            return 0
        for entry in os.scandir(folder):
            try:
                if entry.is_file() and now - entry.stat().st_mtime > ttl_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
