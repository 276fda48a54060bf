"""Group members answering a game question, simulated: who answers, what and when, as the entries file."""

from __future__ import annotations

import csv
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from siyu.sandbox.groups import GroupBackend
from siyu.sandbox.platform import CHINA

# What the bank's answer form exports, one row per answer.
ENTRY_COLUMNS = ("external_userid", "chat_id", "answer", "time")
# Reported participation: 70 to 100 members of a 200-member group.
DEFAULT_PARTICIPATION = (0.35, 0.50)


class AnswersRequest(BaseModel):
    """Which groups answer which question, how many take part, and where the entries go."""

    model_config = ConfigDict(extra="forbid")

    chat_ids: list[str] = Field(min_length=1)
    question_id: str = Field(min_length=1)
    correct_answer: str = Field(min_length=1)
    path: str = Field(description="Where to write the entries CSV (UTF-8, header row)")
    options: list[str] = Field(
        default_factory=lambda: ["a", "b", "c"], description="Answers a member may give"
    )
    participation: float | None = Field(
        None, ge=0, le=1, description="Share of customers who answer; None draws 35-50 % a group"
    )
    correct_share: float = Field(0.6, ge=0, le=1, description="Share of answers that are right")
    start_at: float | None = Field(None, description="When the question was asked; default now")
    window_seconds: float = Field(3600, gt=0, description="Answers arrive within this time")
    seed: int = 0
    append: bool = Field(False, description="Add to the file instead of replacing it")
    record_messages: bool = Field(True, description="Count each answer as a chat message")


def _answer_time(rng: random.Random, start: float, window: float) -> int:
    # Most answers come early, a tail trickles in until the window closes.
    return int(start + window * rng.betavariate(1.2, 3.0))


def simulate_answers(groups: GroupBackend, request: AnswersRequest, now: float) -> dict[str, Any]:
    """Draw the answers (the same for the same request and members) and write them out."""
    for chat_id in request.chat_ids:
        groups.group(chat_id)  # an unknown chat fails the whole request before any write
    start = now if request.start_at is None else request.start_at
    wrong = [o for o in request.options if o != request.correct_answer] or ["?"]
    rows: list[tuple[int, str, str, str]] = []
    per_chat: dict[str, dict[str, int]] = {}
    for chat_id in dict.fromkeys(request.chat_ids):
        rng = random.Random(f"{request.seed}|{request.question_id}|{chat_id}")
        members = groups.external_members(chat_id)
        share = request.participation
        if share is None:
            share = rng.uniform(*DEFAULT_PARTICIPATION)
        answering = rng.sample(members, round(len(members) * share))
        correct = 0
        for ext in answering:
            right = rng.random() < request.correct_share
            correct += right
            answer = request.correct_answer if right else rng.choice(wrong)
            rows.append((_answer_time(rng, start, request.window_seconds), chat_id, ext, answer))
        per_chat[chat_id] = {
            "members": len(members),
            "answered": len(answering),
            "correct": correct,
        }
    rows.sort()
    path = Path(request.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not (request.append and path.exists())
    with path.open("w" if new_file else "a", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        if new_file:
            writer.writerow(ENTRY_COLUMNS)
        for at, chat_id, ext, answer in rows:
            writer.writerow([ext, chat_id, answer, datetime.fromtimestamp(at, CHINA).isoformat()])
    if request.record_messages:
        for at, chat_id, ext, _ in rows:
            groups.record_messages(chat_id, ext, at)
    return {
        "path": str(path),
        "question_id": request.question_id,
        "entries": len(rows),
        "correct": sum(c["correct"] for c in per_chat.values()),
        "chats": per_chat,
    }
