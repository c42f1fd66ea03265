"""`thinkroute collect`: run every candidate plan of a config on a labelled data file through the running
router, grade each answer, and write an outcome file that `route-eval` and `train` read.

- `graders`: numeric answer, multiple-choice letter, exact match (registry `GRADERS`).
- `dataset`: the labelled rows (text, gold answer, task, grader) of a JSON-lines file.
- `outcomes`: the outcome file (one row per query, one object per plan), resume and summary.
- `runner`: the concurrent, deadline-bounded requests over the router's gRPC ingress.
"""
