"""`S3Storage`, the distributed profile: the same keys under `s3://bucket/prefix/` (IMGPIPE_STORAGE_URL) in any
S3-compatible store, so that steps on other machines read and write the same files (see `docs/scaling.md`)."""
from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlsplit

from imgpipe.storage.interface import Storage
from imgpipe.storage.keys import checked_key, checked_request_id


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` as ("bucket", "some/prefix"); the prefix may be empty."""
    parts = urlsplit(url or "")
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return parts.netloc, parts.path.strip("/")


class S3Storage(Storage):
    """An S3-compatible bucket: `s3://bucket/prefix/<key>`. The client comes from boto3's default chain (the
    standard AWS_* variables, AWS_ENDPOINT_URL for a server other than AWS), is made on first use, and is
    shared by the threads of a step (boto3 clients are thread-safe; making one is not)."""

    def __init__(self, storage_url: str, public_base_url: str):
        super().__init__(public_base_url)
        self.bucket, self.prefix = split_s3_url(storage_url)
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3  # only the distributed profile needs it

                    self._client = boto3.session.Session().client("s3")
        return self._client

    def object_key(self, key: str) -> str:
        key = checked_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def _put(self, key: str, data: bytes | Path, content_type: str) -> None:
        if isinstance(data, Path):
            self.client.upload_file(str(data), self.bucket, self.object_key(key),
                                    ExtraArgs={"ContentType": content_type})
        else:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                   ContentType=content_type)

    def _get(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        with answer["Body"] as body:
            return body.read()

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _link(self, source: str, target: str) -> None:
        self.client.copy_object(Bucket=self.bucket, Key=self.object_key(target),
                                CopySource={"Bucket": self.bucket, "Key": self.object_key(source)})

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects call takes
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.object_key(key)} for key in keys[start:start + 1000]], "Quiet": True})

    def _delete_folder(self, root: str, request_id: str) -> None:
        self._delete_listed(self.object_key(f"{root}/{checked_request_id(request_id)}/x")[:-1])

    def _delete_prefixed(self, prefix: str) -> None:
        self._delete_listed(self.object_key(prefix))

    def _delete_listed(self, object_prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=object_prefix):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})


def _is_missing(exc: Exception) -> bool:
    """A botocore ClientError for a key that is not there (GET says NoSuchKey, HEAD only 404)."""
    error = getattr(exc, "response", None)
    code = error.get("Error", {}).get("Code") if isinstance(error, dict) else None
    return code in ("NoSuchKey", "404", "NotFound")
