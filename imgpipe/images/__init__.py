"""One image's way: the quality estimate, the image policy, the isolated compressor, and the batch runner inside a
step (which downloads through `imgpipe.net`)."""
