"""`stack bench` and `stack tune`, by job: `points` (what a point measures), `load` (the load
generator through Triton, shared memory, Triton's statistics), `raw` (the published model run
without the server), `sweep`, `report` (summary, JSON, CSV, plots) and `tune` (batch sizes into
`.env`)."""
