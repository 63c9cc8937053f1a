"""Batch line claims against a real Redis, on a synthetic clock: idle capacity only, leases, exactly-once results."""

from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.batches import BatchDoc, Batches, BatchStatus, TakeOutcome
from warmpool.routing import Routing
from warmpool.snapshot import SnapshotReader

NOW = 1_000_000.0


def doc(bid: str = "batch-a", good: int = 3, tenant: str = "physics") -> BatchDoc:
    return BatchDoc(
        id=bid,
        tenant=tenant,
        key_id="k",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        model="m",
        created_at=int(NOW),
        expires_at=int(NOW) + 100,
        total=good,
        good=good,
    )


async def started(redis_client: aioredis.Redis, good: int = 3) -> Batches:
    b = Batches(redis_client)
    assert await b.create(doc(good=good), cap=5)
    status = BatchStatus.VALIDATING
    for _ in range(good):
        assert status is BatchStatus.VALIDATING
        status = await b.load("batch-a", good=good, chunk=1, now_s=NOW)
    assert status is BatchStatus.IN_PROGRESS
    return b


async def test_a_line_takes_only_idle_capacity(redis_client: aioredis.Redis) -> None:
    b = await started(redis_client)
    routing = Routing(redis_client)
    take = await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5)
    assert take.outcome is TakeOutcome.COLD  # no instance: recorded as batch demand, nothing else
    assert await redis_client.exists("sl:bdem:m") and not await redis_client.exists("sl:dem:m", "sl:q:m")
    await routing.activate("m", "i1", cap=4)
    # An interactive ticket waits: no batch line may take a slot.
    for n in range(4):
        assert (await routing.admit("m", "gw1", f"r{n}", now_s=NOW, queue_max=9, global_max=9)).instance_id == "i1"
    assert (await routing.admit("m", "gw1", "queued", now_s=NOW, queue_max=9, global_max=9)).outcome.value == "queued"
    assert (await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5)).outcome is TakeOutcome.BUSY
    await routing.cancel("m", "gw1", "queued")
    for n in range(3):
        await routing.release("gw1", f"r{n}")
    # One interactive request in flight, cap 4, fraction 0.5: one batch line fits, not two.
    first = await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5)
    assert first.outcome is TakeOutcome.LINE and first.instance_id == "i1"
    assert (await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5)).outcome is TakeOutcome.BUSY
    assert await routing.inflight("m") == {"i1": 2}
    # The launcher's view leaves the batch line out: it never scales up for, or keeps an instance for, batch work.
    snap = (await SnapshotReader(redis_client).read(["m"]))["m"]
    assert (snap.inflight, snap.batch_in_flight) == ({"i1": 1}, 1)
    # The line's slot is an ordinary slot, given back when its result is recorded.
    assert await b.finish("batch-a", first.line, first.token, ok=True, gateway_id="gw1")
    assert await routing.inflight("m") == {"i1": 1}
    assert await routing.release("gw1", first.token) == -1
    assert (await SnapshotReader(redis_client).read(["m"]))["m"].batch_in_flight == 0


async def test_beside_interactive_requests_batch_lines_only_trickle(redis_client: aioredis.Redis) -> None:
    b = await started(redis_client, good=6)
    routing = Routing(redis_client)
    await routing.activate("m", "i1", cap=16)

    async def take() -> TakeOutcome:
        return (await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5, beside=1)).outcome

    # Nobody else on the instance: up to the headroom (8 of 16), more than `beside`.
    assert [await take() for _ in range(2)] == [TakeOutcome.LINE] * 2
    # An interactive request arrives: the two lines run on, no third joins them.
    assert (await routing.admit("m", "gw1", "r0", now_s=NOW, queue_max=9, global_max=9)).instance_id == "i1"
    assert await take() is TakeOutcome.BUSY
    await routing.release("gw1", "r0")
    assert await take() is TakeOutcome.LINE
    # Without `beside`, only the headroom counts.
    assert (await routing.admit("m", "gw1", "r1", now_s=NOW, queue_max=9, global_max=9)).instance_id == "i1"
    assert (await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=0.5)).outcome is TakeOutcome.LINE


async def test_a_lapsed_lease_moves_the_line_and_the_old_result_is_refused(redis_client: aioredis.Redis) -> None:
    b = await started(redis_client, good=1)
    await Routing(redis_client).activate("m", "i1", cap=8)
    dead = await b.take("batch-a", "m", "gw-dead", now_s=NOW, lease_s=10, fraction=1)
    assert dead.outcome is TakeOutcome.LINE
    # Claimed and leased: nobody else gets it.
    assert (await b.take("batch-a", "m", "gw2", now_s=NOW + 5, lease_s=10, fraction=1)).outcome is TakeOutcome.EMPTY
    # The lease lapsed (its runner died): another runner claims the same line.
    alive = await b.take("batch-a", "m", "gw2", now_s=NOW + 11, lease_s=10, fraction=1)
    assert alive.outcome is TakeOutcome.LINE and alive.line == dead.line and alive.token != dead.token
    assert await b.renew("batch-a", [(dead.line, dead.token)], now_s=NOW + 11, lease_s=10) == [dead.line]
    assert not await b.finish("batch-a", dead.line, dead.token, ok=True, gateway_id="gw2")
    assert await b.finish("batch-a", alive.line, alive.token, ok=True, gateway_id="gw2")
    assert not await b.finish("batch-a", alive.line, alive.token, ok=True, gateway_id="gw2")  # once only
    assert await b.done_tokens("batch-a") == {alive.line: alive.token}
    record = await b.get("batch-a")
    assert record is not None and (record.completed, record.failed) == (1, 0)
    assert await b.begin_finalize("batch-a", "gw2", now_s=NOW + 12, lease_s=10) is BatchStatus.COMPLETED
    # Another runner cannot finalize it meanwhile, only after the finalizer's lease lapsed.
    assert await b.begin_finalize("batch-a", "gw3", now_s=NOW + 13, lease_s=10) is None
    assert await b.begin_finalize("batch-a", "gw3", now_s=NOW + 23, lease_s=10) is BatchStatus.COMPLETED
    assert not await b.complete("batch-a", "gw2", now_s=NOW + 24, output_file_id="file-o", error_file_id="", ttl_s=60)
    assert await b.complete("batch-a", "gw3", now_s=NOW + 24, output_file_id="file-o", error_file_id="", ttl_s=60)
    done = await b.get("batch-a")
    assert done is not None and done.status is BatchStatus.COMPLETED and done.output_file_id == "file-o"
    assert await b.active() == []
    assert 0 < await redis_client.ttl("sl:batch:batch-a") <= 60


async def test_cancel_drains_lines_in_flight_and_expiry_stops_a_batch(redis_client: aioredis.Redis) -> None:
    b = await started(redis_client, good=2)
    await Routing(redis_client).activate("m", "i1", cap=8)
    running = await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=1)
    assert await b.cancel("batch-a", now_s=NOW + 1) is BatchStatus.CANCELLING
    assert (await b.take("batch-a", "m", "gw1", now_s=NOW + 1, lease_s=10, fraction=1)).outcome is TakeOutcome.INACTIVE
    assert await b.begin_finalize("batch-a", "gw1", now_s=NOW + 2, lease_s=10) is None  # a line still runs
    assert await b.finish("batch-a", running.line, running.token, ok=True, gateway_id="gw1")
    assert await b.begin_finalize("batch-a", "gw1", now_s=NOW + 3, lease_s=10) is BatchStatus.CANCELLED

    later = Batches(redis_client)
    assert await later.create(doc("batch-b", good=2), cap=5)
    await later.load("batch-b", good=2, chunk=10, now_s=NOW)
    assert await later.begin_finalize("batch-b", "gw1", now_s=NOW + 50, lease_s=10) is None
    assert await later.begin_finalize("batch-b", "gw1", now_s=NOW + 100, lease_s=10) is BatchStatus.EXPIRED


async def test_tenant_cap_counts_active_batches(redis_client: aioredis.Redis) -> None:
    b = Batches(redis_client)
    assert await b.create(doc("batch-1"), cap=2)
    assert await b.create(doc("batch-2"), cap=2)
    assert not await b.create(doc("batch-3"), cap=2)
    assert await b.create(doc("batch-4", tenant="chemistry"), cap=2)
    assert await b.get("batch-3") is None


async def test_the_backlog_counts_free_and_leased_lines_of_running_batches(redis_client: aioredis.Redis) -> None:
    b = await started(redis_client, good=3)
    [row] = await b.backlog()
    # No line ran yet: the batch names the client's model, for the launcher to resolve.
    assert (row.bid, row.model, row.resolved, row.pending) == ("batch-a", "m", False, 3)
    await Routing(redis_client).activate("m", "i1", cap=4)
    take = await b.take("batch-a", "m", "gw1", now_s=NOW, lease_s=10, fraction=1)
    [row] = await b.backlog()
    assert (row.model, row.resolved, row.pending) == ("m", True, 3)  # a leased line is still to do
    assert await b.finish("batch-a", take.line, take.token, ok=True, gateway_id="gw1")
    assert [r.pending for r in await b.backlog()] == [2]
    assert await b.cancel("batch-a", now_s=NOW) is BatchStatus.CANCELLING
    assert await b.backlog() == []  # a cancelled batch starts no more lines
