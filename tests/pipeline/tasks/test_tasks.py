"""Task kinds: one per task, and the drivers written once against them."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tasks import TASK_KINDS, task_kind
from schemas.job import ShardMessage, Task
from schemas.pair import Pair

ROOT = Path(__file__).resolve().parents[3]
# Written once for every task: no branch on which task it is.
DRIVERS = [
    "pipeline/local",
    "pipeline/runtime",
    "pipeline/jobs",
    "pipeline/storage",
    "pipeline/engine",
    "producers",
    "pipeline/inputs",
    "workers",
]
BRANCH = re.compile(r"\b(is|is not|==|!=)\s+Task\.|Task\.RERANK")


def test_every_task_has_its_kind_with_settings_and_names():
    assert set(TASK_KINDS) == set(Task)
    settings = Settings()
    for task, kind in TASK_KINDS.items():
        assert kind.task is task and task_kind(task) is kind
        assert kind.model_env == f"M3PIPE_{kind.model_setting.upper()}"
        assert kind.model_spec(settings) == getattr(settings, kind.model_setting)
        assert kind.counts == task.count_names and kind.counts[1] == f"{kind.item}s"
    assert {kind.command for kind in TASK_KINDS.values()} == {"encode", "rerank"}


def test_a_shard_message_names_the_task_of_its_items():
    pair = Pair(query_id="q", query="query", doc_id="d", passage="passage")
    assert ShardMessage(job_id="job-1", shard=0, pairs=[pair]).task is Task.RERANK
    message = ShardMessage.model_validate({"job_id": "job-1", "shard": 0,
                                           "documents": [{"id": "a", "text": "b"}]})  # fmt: skip
    assert message.task is Task.EMBED


def test_drivers_do_not_branch_on_the_task():
    offenders = []
    for entry in DRIVERS:
        path = ROOT / entry
        for module in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for number, line in enumerate(module.read_text().splitlines(), 1):
                if BRANCH.search(line):
                    offenders.append(f"{module.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "a task branch outside pipeline/tasks:\n" + "\n".join(offenders)
