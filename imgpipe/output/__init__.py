"""The end of a request: the output CSV lined up with the input, the terminal status, the webhook queued."""
