"""Batch results on disk: each runner appends to its own part file; the finalizer assembles the output.

A part-file line is `{"i": line, "t": token, "ok": bool, "r": <output-file entry>}`, written with one
`write` before the line's result is recorded in Redis (`Batches.finish`), so a runner killed at any
point leaves either nothing or a complete line (a torn last line is skipped). Assembly keeps, for
each line, only the entry whose token Redis recorded: an entry of a claim that lost its lease (its
runner died or stalled, and another ran the line again) is dropped, so each line appears once.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from queue_gateway.file_dir import FileDir

UNFINISHED_CODES = {"expired": "batch_expired", "cancelled": "batch_cancelled"}


def entry(custom_id: str, *, status: int | None, body: Any, request_id: str, error: dict[str, Any] | None) -> bytes:
    """One output- or error-file line in OpenAI's batch format."""
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return orjson.dumps(
        {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error}
    )


class PartWriter:
    """This runner's part files, one append-only descriptor per batch."""

    def __init__(self, files: FileDir, runner: str) -> None:
        self.files = files
        self.runner = runner
        self._fds: dict[str, int] = {}

    def append(self, bid: str, line: int, token: str, ok: bool, result: bytes) -> None:
        fd = self._fds.get(bid)
        if fd is None:
            fd = self._fds[bid] = os.open(self.files.part(bid, self.runner), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        record = b'{"i":%d,"t":%s,"ok":%s,"r":%s}\n' % (line, orjson.dumps(token), b"true" if ok else b"false", result)
        os.write(fd, record)

    def close(self, bid: str) -> None:
        fd = self._fds.pop(bid, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for bid in list(self._fds):
            self.close(bid)


class LineFile:
    """A batch's `lines.jsonl`, read line by line by offset (indexed once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: list[int] = []
        pos = 0
        with path.open("rb") as f:
            for raw in f:
                self.offsets.append(pos)
                pos += len(raw)
        self.offsets.append(pos)
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, line: int) -> dict[str, Any]:
        start, end = self.offsets[line], self.offsets[line + 1]
        data: dict[str, Any] = orjson.loads(os.pread(self.fd, end - start, start))
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class Assembled:
    output_lines: int
    error_lines: int
    missing: list[int]
    """Lines recorded done whose entry is in no part file (storage lost it): reported in the error file."""


def assemble(files: FileDir, bid: str, done: dict[int, str], *, final: str, output: Path, errors: Path) -> Assembled:
    """Write the output and error files (each via a temporary name, so a finalizer that dies leaves none)."""
    chosen: dict[int, tuple[bool, bytes]] = {}
    for part in files.parts(bid):
        with part.open("rb") as f:
            for raw in f:
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a torn last line of a runner killed mid-write
                line = rec.get("i")
                if isinstance(line, int) and done.get(line) == rec.get("t") and line not in chosen:
                    chosen[line] = (bool(rec.get("ok")), orjson.dumps(rec.get("r")))
    lines = LineFile(files.lines(bid)) if files.lines(bid).is_file() else None
    n_out = n_err = 0
    missing: list[int] = []
    out_tmp, err_tmp = output.with_suffix(".tmp"), errors.with_suffix(".tmp")
    try:
        with out_tmp.open("wb") as out, err_tmp.open("wb") as err:
            invalid = files.invalid(bid)
            if invalid.is_file():
                with invalid.open("rb") as f:
                    for raw in f:
                        err.write(raw)
                        n_err += 1
            total = len(lines.offsets) - 1 if lines is not None else 0
            for line in range(total):
                hit = chosen.get(line)
                if hit is not None:
                    ok, data = hit
                    (out if ok else err).write(data + b"\n")
                    n_out, n_err = (n_out + 1, n_err) if ok else (n_out, n_err + 1)
                    continue
                assert lines is not None
                custom_id = str(lines.read(line).get("custom_id"))
                if line in done:
                    missing.append(line)
                    error = {"code": "result_lost", "message": "The line ran but its result was lost by storage."}
                else:
                    code = UNFINISHED_CODES.get(final, "batch_unfinished")
                    error = {"code": code, "message": f"The batch was {final} before this request ran."}
                err.write(entry(custom_id, status=None, body=None, request_id="", error=error) + b"\n")
                n_err += 1
            out.flush()
            os.fsync(out.fileno())
            err.flush()
            os.fsync(err.fileno())
        os.replace(out_tmp, output)
        os.replace(err_tmp, errors)
    finally:
        if lines is not None:
            lines.close()
        for tmp in (out_tmp, err_tmp):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return Assembled(n_out, n_err, missing)
