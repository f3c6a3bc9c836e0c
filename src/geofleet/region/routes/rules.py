"""``/rules``: topic rules on AWS IoT's control-plane paths, and ``/rules-outbox``: what the
region's rules still have to deliver, what they gave up on, and pausing a forward target.

The rule body is AWS's ``TopicRulePayload``: ``{"sql", "description", "actions",
"errorAction", "ruleDisabled", "awsIotSqlVersion"}``. AWS wraps it as ``topicRulePayload`` in
CreateTopicRule's request; both shapes are taken.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from geofleet.domain.errors import InvalidRequest, NotFound
from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.services.rules.admin import RuleAdmin
from geofleet.services.rules.senders import RuleSenders
from geofleet.store.rules_sqlite import RulesStore


def _payload(body: dict[str, Any]) -> dict[str, Any]:
    inner = body.get("topicRulePayload", body) if len(body) == 1 else body
    if not isinstance(inner, dict):
        raise InvalidRequest("'topicRulePayload' must be an object")
    return inner


def router(rules: RuleAdmin, senders: RuleSenders, store: RulesStore, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["rules"], dependencies=access.guard)

    @routes.get("/rules-outbox")
    async def outbox() -> Json:
        return senders.status()

    @routes.get("/rules-outbox/dead-letters")
    async def dead_letters(limit: int = Query(100, ge=1, le=1000)) -> Json:
        return {"deadLetters": store.dead_letters(limit)}

    @routes.post("/rules-outbox/forward/{region}/{state}")
    async def pause_forward(region: str, state: str) -> Json:
        """Stop (``pause``) or restart (``resume``) forwarding to one region; the messages wait
        in the outbox meanwhile (maintenance, drills). Not persisted: a restart resumes."""
        if region not in senders.forwards:
            raise NotFound(f"{region!r} is not another region of this fleet")
        if state not in ("pause", "resume"):
            raise InvalidRequest(f"unknown state {state!r}: use /pause or /resume")
        senders.pause(region, state == "pause")
        return senders.forwards[region].status()

    @routes.get("/rules")
    async def list_rules() -> Json:
        return {"rules": rules.all()}

    @routes.post("/rules/{name}", status_code=201)
    async def create_rule(name: str, body: dict[str, Any]) -> Json:
        return {"rule": rules.create(name, _payload(body))}

    @routes.get("/rules/{name}")
    async def get_rule(name: str) -> Json:
        return {"rule": rules.get(name)}

    @routes.put("/rules/{name}")
    @routes.patch("/rules/{name}")
    async def replace_rule(name: str, body: dict[str, Any]) -> Json:
        return {"rule": rules.replace(name, _payload(body))}

    @routes.post("/rules/{name}/enable")
    async def enable_rule(name: str) -> Json:
        return {"rule": rules.set_disabled(name, False)}

    @routes.post("/rules/{name}/disable")
    async def disable_rule(name: str) -> Json:
        return {"rule": rules.set_disabled(name, True)}

    @routes.delete("/rules/{name}", status_code=204)
    async def delete_rule(name: str) -> None:
        rules.delete(name)

    return routes
