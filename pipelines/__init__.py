"""pipelines/: the Config, the DAG factory and the orchestrator entry files. Imports components/, modules/, serving/, data/; never conveyor/."""
