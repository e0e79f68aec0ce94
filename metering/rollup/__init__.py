"""The rollup: events priced and summarized into the per-task and per-day tables."""
