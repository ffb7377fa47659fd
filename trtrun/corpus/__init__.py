"""Corpus embedding (`trtrun embed`): a file of texts in, a folder of Parquet shards of vectors out.

    from trtrun.corpus import embed_corpus
    summary = embed_corpus("docs.jsonl", "vectors/", model="minilm.hybrid.plan", tokenizer=".data/minilm",
                           id_column="doc_id")

In-process (trtrun.corpus.job) with the Embedder's pool of contexts, or on a Ray cluster
(trtrun.corpus.ray_job: Ray Data read tasks, one embedding actor per GPU, write tasks). Both write the same
shards, so a job started one way can be finished the other. docs/ray.md describes the layout.
"""

from __future__ import annotations

from .embed import embed_corpus
from .job import (DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS, FORMATS, ON_ERROR, CorpusInput, JobProgress, JobSummary,
                  read_output)

__all__ = ["embed_corpus", "read_output", "CorpusInput", "JobProgress", "JobSummary", "FORMATS", "ON_ERROR",
           "DEFAULT_SHARD_ROWS", "DEFAULT_CHUNK_ROWS"]
