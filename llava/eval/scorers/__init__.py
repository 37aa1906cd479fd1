"""Official scoring algorithms, one module per family, independent of file formats.

Each ``score_*`` function takes plain Python records and returns a ``ScoreResult`` whose ``num_unparsed``
counts outputs the benchmark's own parser could not read.
"""

from llava.eval.scorers.common import ScoreResult

__all__ = ["ScoreResult"]
