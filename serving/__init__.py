"""serving/: a standalone TF Serving-compatible model server and client. Imports nothing outside serving/."""
