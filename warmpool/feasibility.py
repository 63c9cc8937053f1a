"""The admin API's question to the launcher, over Redis: can the cluster ever run this spec?

The gateway holds no Slurm credentials, so the launcher answers: the admin API publishes the spec
and a request id on `Keys.feasibility_channel`; the leading launcher of every cluster the spec may
use checks it against its Slurm and pushes its verdict to `Keys.feasibility_reply(id)`, which
expires unread after `REPLY_TTL_S`. One cluster that can run it is enough; a "never" waits
`OTHERS_GRACE_S` for another cluster's "yes". No launcher listening, or none answering in time, is an
answer too: "not checked".
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from warmpool.keys import Keys
from warmpool.redisio import awaited, text
from warmpool.specs import ModelSpec

REPLY_TTL_S = 60
POLL_S = 0.1
OTHERS_GRACE_S = 1.0
"""After one cluster's "never", how long another cluster may still say it can run the spec."""


class FeasibilityAnswer(BaseModel):
    """`runnable`: True (it can run), False (never: `reason`), None (it could not be checked: `reason`)."""

    runnable: bool | None
    reason: str = ""


class FeasibilityQuestion(BaseModel):
    request_id: str
    spec: ModelSpec


async def ask(redis: aioredis.Redis, keys: Keys, spec: ModelSpec, *, timeout_s: float) -> FeasibilityAnswer:
    """Ask the launchers about `spec`; "not checked" when none listens or none answers within `timeout_s`."""
    question = FeasibilityQuestion(request_id=uuid.uuid4().hex, spec=spec)
    listeners = int(await awaited(redis.publish(keys.feasibility_channel, question.model_dump_json())))
    if listeners == 0:
        return FeasibilityAnswer(runnable=None, reason="no launcher is running to check it against Slurm")
    reply = keys.feasibility_reply(question.request_id)
    deadline = time.monotonic() + timeout_s
    answers: list[FeasibilityAnswer] = []
    while time.monotonic() < deadline:
        raw = await awaited(redis.lpop(reply))
        if raw is None:
            await asyncio.sleep(POLL_S)
            continue
        got = FeasibilityAnswer.model_validate_json(text(raw))
        if got.runnable:
            return got
        answers.append(got)
        if got.runnable is False:
            deadline = min(deadline, time.monotonic() + OTHERS_GRACE_S)
    never = [a.reason for a in answers if a.runnable is False]
    if never:
        return FeasibilityAnswer(runnable=False, reason="; ".join(never))
    if answers:
        return answers[0]
    return FeasibilityAnswer(runnable=None, reason=f"the launcher did not answer within {timeout_s:g} s")


def question_of(message: object) -> FeasibilityQuestion | None:
    """The question a pubsub message carries, or None if it is not one (never trusted further)."""
    try:
        return FeasibilityQuestion.model_validate_json(text(message) or "")
    except ValueError:
        return None


async def answer(redis: aioredis.Redis, keys: Keys, request_id: str, verdict: FeasibilityAnswer) -> None:
    reply = keys.feasibility_reply(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(reply, orjson.dumps(verdict.model_dump()))
        pipe.expire(reply, REPLY_TTL_S)
        await pipe.execute()
