"""The two per-batch stages the pipeline runs on actors, plain Python over pyarrow tables:
`decode` (manifest rows -> clips, on CPU) and `inference` (clips -> predictions). Each is
imported from its own module, so that a decode actor does not import torch."""
