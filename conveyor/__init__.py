"""conveyor/: the top layer: commands (CLI) and the MLMD read side (runs, lineage, reports,
drift). It may import every other folder; nothing outside entry points imports it."""
import os

# TensorFlow's C++ start-up chatter (CUDA probes, CPU flags) is noise for a CLI user; set
# before any submodule imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
