"""A small support agent that meters itself with taskmeter's Python client.

    taskmeter tenants create acme-ai
    taskmeter keys create --tenant acme-ai --scopes ingest       # prints the key
    taskmeter serve &
    python examples/agent_loop.py --url http://127.0.0.1:8000 --api-key tm_...

Each ticket is one task: `client.task(...)` emits task.started, every model call records its
usage from the response, and the block's end emits task.completed, or task.failed when it raises.
No real model is called: `fake_llm` answers with dicts shaped like OpenAI chat completions and
Anthropic messages (an SDK response object is read the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any

from taskmeter_client import TaskmeterClient

TICKETS = [
    ("acme", "The invoice for October shows the wrong VAT number."),
    ("acme", "How do I rotate my API key?"),
    ("globex", "The export to CSV times out on large projects."),
    ("globex", "Please delete the account of a former employee."),
    ("initech", "Our webhook stopped firing yesterday."),
]


class ToolError(Exception):
    pass


def fake_llm(provider: str, model: str, prompt: str, rng: random.Random) -> dict[str, Any]:
    """A response dict as the provider's API returns it (only what metering reads, plus text)."""
    prompt_tokens = 200 + 4 * len(prompt) + rng.randint(0, 400)
    output_tokens = rng.randint(40, 400)
    cached = rng.choice([0, 0, 128, 1024]) if prompt_tokens > 1024 else 0
    if provider == "anthropic":  # Anthropic counts input without the cache
        return {
            "id": f"msg_{rng.getrandbits(64):016x}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Here is the plan."}], "stop_reason": "end_turn",
            "usage": {"input_tokens": prompt_tokens - cached, "cache_read_input_tokens": cached,
                      "cache_creation_input_tokens": 0, "output_tokens": output_tokens},
        }  # fmt: skip
    reasoning = rng.randint(0, output_tokens // 2) if model.startswith("o") else 0
    return {
        "id": f"chatcmpl-{rng.getrandbits(64):016x}", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                  "total_tokens": prompt_tokens + output_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached},
                  "completion_tokens_details": {"reasoning_tokens": reasoning}},
    }  # fmt: skip


def handle(ticket: str, task: Any, rng: random.Random, *, fail: bool) -> str:
    """Plan with Claude, act with two OpenAI calls; record the usage of each call."""
    plan = fake_llm("anthropic", "claude-sonnet-4-5", ticket, rng)
    task.record_response(plan)
    for step in ("look up the account", "draft the answer"):
        response = fake_llm("openai", "gpt-4o-mini" if step.startswith("look") else "o4-mini", step, rng)
        task.record_response(response)
        if fail and step.startswith("look"):
            raise ToolError("the CRM did not answer")
    return "answered"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TASKMETER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TASKMETER_API_KEY"))
    parser.add_argument("--spool-dir", default=None, help="where undelivered events wait (default: ~/.cache)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give --api-key or set TASKMETER_API_KEY (an ingest key: taskmeter keys create)")

    rng = random.Random(args.seed)
    outcomes = {"completed": 0, "failed": 0}
    client = TaskmeterClient(args.url, args.api_key, spool_dir=args.spool_dir, metadata={"agent": "support-triage"})
    with client:  # close() at the end sends whatever is still queued
        for number, (customer, ticket) in enumerate(TICKETS, 1):
            try:
                with client.task(customer=customer, task_type="support_ticket", task=f"ticket-{number}") as task:
                    handle(ticket, task, rng, fail=number == 4)
                outcomes["completed"] += 1
            except ToolError:  # the task was recorded as failed; the agent carries on
                outcomes["failed"] += 1
        delivered = client.flush(timeout=30)
    print(json.dumps({"tasks": len(TICKETS), **outcomes, "delivered": delivered,
                      "accepted": client.stats.accepted, "spooled": client.stats.spooled}))  # fmt: skip


if __name__ == "__main__":
    main()
