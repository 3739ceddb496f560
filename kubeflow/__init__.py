"""kubeflow/: entry point that compiles the pipelines for KFP v2 / Vertex AI; may import any layer."""
