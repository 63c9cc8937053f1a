"""Batch input lines checked one by one; output assembled from part files with exactly one entry per line."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from queue_gateway.batch_input import Invalid, Request, check_line, prepare
from queue_gateway.batch_output import PartWriter, assemble, entry
from queue_gateway.file_dir import FileDir

CHAT = "/v1/chat/completions"


def line(**over: object) -> bytes:
    base: dict[str, object] = {
        "custom_id": "a",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    }
    base.update(over)
    return orjson.dumps(base)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1]", "JSON object"),
        (line(custom_id=""), "custom_id"),
        (line(custom_id=7), "custom_id"),
        (line(method="GET"), "POST"),
        (line(url="/v1/embeddings"), "endpoint"),
        (line(body="x"), "`body`"),
        (line(body={"messages": [{"role": "user"}]}), "`model`"),
        (line(body={"model": "m", "messages": []}), "`messages`"),
        (line(body={"model": "m", "messages": [{}], "stream": True}), "streaming"),
    ],
)
def test_invalid_lines_say_why(raw: bytes, reason: str) -> None:
    checked = check_line(raw, 4, CHAT)
    assert isinstance(checked, Invalid) and reason in checked.message and checked.line == 4


def test_a_valid_line() -> None:
    checked = check_line(line(), 1, CHAT)
    assert isinstance(checked, Request) and checked.model == "m" and checked.custom_id == "a"


def test_prepare_skips_blank_lines_and_refuses_duplicate_ids(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(line() + b"\n\n" + line(custom_id="b") + b"\n" + line() + b"\n" + b"oops\n")
    out = prepare(src, tmp_path / "b" / "lines.jsonl", tmp_path / "b" / "invalid.jsonl", endpoint=CHAT, max_lines=9)
    assert (out.total, out.good, out.models) == (4, 2, {"m"})
    assert "used twice" in out.errors[0]["message"] and out.errors[0]["line"] == 4
    with pytest.raises(ValueError, match="more than 3"):
        prepare(src, tmp_path / "c" / "l", tmp_path / "c" / "i", endpoint=CHAT, max_lines=3)


def test_assemble_keeps_only_the_recorded_claim_of_each_line(tmp_path: Path) -> None:
    files = FileDir(tmp_path)
    files.ensure()
    bid = "batch-x"
    files.batch(bid).mkdir()
    files.lines(bid).write_bytes(b"".join(orjson.dumps({"custom_id": f"c{i}", "body": {}}) + b"\n" for i in range(3)))
    dead, alive = PartWriter(files, "gw-a-dead"), PartWriter(files, "gw-alive")  # the dead one's part is read first
    ok = entry("c0", status=200, body={"n": 0}, request_id="r", error=None)
    stale = entry("c0", status=200, body={"n": "stale"}, request_id="r", error=None)
    dead.append(bid, 0, "batch-x:1", True, stale)  # this runner died before Redis recorded it
    alive.append(bid, 0, "batch-x:2", True, ok)
    alive.append(bid, 1, "batch-x:3", False, entry("c1", status=400, body={}, request_id="r", error=None))
    dead.close_all()
    alive.close_all()
    with files.part(bid, "gw-a-dead").open("ab") as torn:
        torn.write(b'{"i":2,"t":"batch-x')  # killed mid-write
    made = assemble(
        files,
        bid,
        {0: "batch-x:2", 1: "batch-x:3"},
        final="expired",
        output=tmp_path / "out.jsonl",
        errors=tmp_path / "err.jsonl",
    )
    assert (made.output_lines, made.error_lines, made.missing) == (1, 2, [])
    out = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    err = [orjson.loads(x) for x in (tmp_path / "err.jsonl").read_bytes().splitlines()]
    assert [(r["custom_id"], r["response"]["body"]) for r in out] == [("c0", {"n": 0})]
    assert [(r["custom_id"], (r["error"] or {}).get("code")) for r in err] == [("c1", None), ("c2", "batch_expired")]
