"""Evaluation: per-example metrics (:mod:`cfjax.eval.metrics`) and sums-only evaluators
(:mod:`cfjax.eval.evaluators`) that shard, stream, resume and merge by addition."""
