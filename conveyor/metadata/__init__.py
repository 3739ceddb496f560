"""conveyor/metadata/: the read side of ML Metadata (MLMD): runs, artifact contents, lineage, diffs.

Everything here walks MLMD's own records: contexts (pipeline, pipeline_run or Airflow's run,
node), executions with their exec properties (stored as execution custom properties by TFX),
and INPUT/OUTPUT events linking executions to artifacts. Artifact *contents* (statistics,
schema, anomalies, TFMA metrics) are read from the artifact URIs MLMD records; nothing is
inferred from folder names. Nothing here writes to the store.

Modules, each importing only those above it:
  store.py      open_store (read-only), Graph (cached view of the store), record decoding
  artifacts.py  ArtifactRef and the artifact readers (statistics, anomalies, schema, TFMA, ...)
  lineage.py    pushed versions, model lineage back to the data, data forward to the models
  runs.py       run contexts, resolve_run, run_record, list_runs
  diff.py       run_details, diff_runs, dag_edges

Results are dataclasses (`Record`); `Record.to_json()` gives the JSON that `conveyor runs |
lineage | diff --json` print, with the same keys in the same order.
"""
