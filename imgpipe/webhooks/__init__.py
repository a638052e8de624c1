"""The webhook of a request's end: its message, Standard Webhooks signing, one attempt, the retry schedule and
the outbox delivery."""
