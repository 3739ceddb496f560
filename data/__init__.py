"""data/: sample data, downloaders and file formats. Imports nothing outside data/."""
