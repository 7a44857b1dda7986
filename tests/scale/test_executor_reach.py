"""What the executors are handed to reach an object-store lake: fast checks, in the main suite."""

from __future__ import annotations

import pytest

from infra.lake import Lake, LakeError


def test_arrow_reaches_the_lake_with_the_delta_rs_storage_options():
    lake = Lake(
        "s3://bucket/lake",
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "aws_access_key_id": "key", "AWS_SECRET_ACCESS_KEY": "secret",
         "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "true", "AWS_SESSION_TOKEN": "token"},
    )
    assert lake.arrow_s3_options() == {
        "endpoint_override": "127.0.0.1:9000", "scheme": "http", "access_key": "key", "secret_key": "secret",
        "region": "eu-west-1", "session_token": "token",
    }
    # no options: Arrow takes the same AWS environment and profile chain as delta-rs
    assert Lake("s3://bucket/lake").arrow_s3_options() == {}
    with pytest.raises(LakeError, match="only s3://"):
        Lake("gs://bucket/lake").arrow_s3_options()
