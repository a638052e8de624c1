"""One image's way: URL safety, the safe fetcher, the quality estimate, the image policy, the isolated
compressor, and the batch runner inside a step."""
