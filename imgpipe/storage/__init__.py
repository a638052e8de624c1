"""Where inputs, compressed images and output CSVs live: one interface, two implementations.

- `keys`: the key of every stored file, the same in both profiles, and the checks of the names keys are built of.
- `interface`: `Storage`, what the pipeline, the intake and the REST API use, and everything the implementations
  share (keys, URLs, content types); an implementation only puts, gets and locates bytes.
- `local`: `LocalStorage`, the embedded default: folders under IMGPIPE_HOME.
- `s3`: `S3Storage`, the distributed profile: the same keys in an S3-compatible bucket.
"""
