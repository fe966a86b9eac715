"""`vivit-batch review OUTPUT --count N --save FILE`: the videos a person should label next
(`pick.py`: uncertain, spread over the embedding space) in a file to fill in (`files.py`: CSV,
JSONL, or Label Studio's task import JSON)."""

from vivit_batch.review.files import FORMATS, TRUTH, review_format, write_review
from vivit_batch.review.pick import POOL_FACTOR, pick_for_review

__all__ = ["FORMATS", "POOL_FACTOR", "TRUTH", "pick_for_review", "review_format", "write_review"]
