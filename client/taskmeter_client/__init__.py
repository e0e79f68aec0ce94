"""taskmeter's Python SDK for agent runtimes: record task events, never lose or double one.

    from taskmeter_client import TaskmeterClient

    client = TaskmeterClient("https://taskmeter.example.com", "tm_...")
    with client.task(customer="acme", task_type="support_ticket") as task:
        task.record_response(response)

It needs only httpx and orjson, and imports nothing of the taskmeter server.
"""

from taskmeter_client.client import (
    AsyncTaskmeterClient,
    BudgetExceeded,
    BudgetUnavailable,
    Task,
    TaskmeterClient,
)
from taskmeter_client.extract import MAX_TOKENS, TokenUsage, UsageFieldError, extract_usage
from taskmeter_client.sender import SenderStats

__all__ = [
    "MAX_TOKENS",
    "AsyncTaskmeterClient",
    "BudgetExceeded",
    "BudgetUnavailable",
    "SenderStats",
    "Task",
    "TaskmeterClient",
    "TokenUsage",
    "UsageFieldError",
    "extract_usage",
]
