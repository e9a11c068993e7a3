"""Where letters live in Redis: a failed shard's message (dead letter, for `m3pipe retry`)
and a message waiting for its retry (retry letter, re-sent if that retry is lost), one hash
field per shard. What a letter holds, and when it spills to the output directory, is
pipeline/jobs/letters.py."""

from __future__ import annotations

from pipeline.jobs.keys import dead_letters_key, retry_letters_key, shard_owner_key
from pipeline.jobs.redis_records import RedisRecords


class LetterRecords(RedisRecords):
    def keep_retry_letter(self, job_id: str, shard: int, message_json: str) -> None:
        """Keep a shard's message while it waits for a retry, so a lost retry is re-sent."""
        self.redis.hset(retry_letters_key(job_id), str(shard), message_json)

    def retry_letter(self, job_id: str, shard: int) -> str | None:
        return self._hget(retry_letters_key(job_id), str(shard))

    def release_shard(self, job_id: str, shard: int) -> None:
        """The shard ended: its kept retry message and its owner token are no longer needed
        (a stale attempt's fence then fails on the ended state). One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(retry_letters_key(job_id), str(shard))
        pipe.hdel(shard_owner_key(job_id), str(shard))
        pipe.execute()

    def dead_letter(self, job_id: str, shard: int, message_json: str) -> None:
        """Keep a failed shard's message so `m3pipe retry` can send it again."""
        self.redis.hset(dead_letters_key(job_id), str(shard), message_json)

    def dead_letters(self, job_id: str) -> dict[int, str]:
        return {int(k): v for k, v in self._hgetall(dead_letters_key(job_id)).items()}
