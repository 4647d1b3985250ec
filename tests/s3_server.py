"""An S3 server for the tests: SeaweedFS started by ``tools/substrate.py`` (``start_seaweed``), or an operator's
server named by ``PHOTOMAKER_TEST_S3_ENDPOINT`` (credentials then from the usual ``AWS_*`` variables).

Both answer the same questions: ``endpoint``, ``env()`` (the standard ``AWS_*`` variables that reach it),
``client()`` (a boto3 client with explicit arguments) and ``stop()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from substrate import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, start_seaweed


@dataclass
class OperatorS3:
    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def stop(self) -> None:
        """Not ours to stop."""


def s3_for_tests(directory: Path):  # noqa: ANN201 - OperatorS3 or substrate.S3Handle
    endpoint = os.environ.get("PHOTOMAKER_TEST_S3_ENDPOINT")
    if endpoint:
        return OperatorS3(endpoint, os.environ.get("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
                          os.environ.get("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY), os.environ.get("AWS_REGION", S3_REGION))
    return start_seaweed(directory)
