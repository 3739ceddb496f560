"""components/: Conveyor's TFX components. Imports modules/, serving/, data/; never conveyor/ or pipelines/."""
