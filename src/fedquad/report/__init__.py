"""Results on disk: resolved config, per-round metrics, summary, final adapter."""
