"""modules/: user code run inside Transform and Trainer (preprocessing_fn, run_fn, models). Imports serving/ and data/ only."""
