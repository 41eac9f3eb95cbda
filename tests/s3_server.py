"""A real S3-compatible HTTP server (``moto_server``) on 127.0.0.1, for the serverless tests.

The server is a separate process on a free port; the nodes talk to it through s3fs over HTTP
exactly as they would to AWS. It checks credentials like AWS does: the fixture creates an IAM
user and access key while the server is still open, then switches IAM enforcement on
(``/moto-api/reset-auth`` 0, the runtime form of ``INITIAL_NO_AUTH_ACTION_COUNT=0``), so from
then on a request signed with any other key or secret is refused by the server itself.

Nothing of the machine's AWS set-up leaks in: the server, this process (while the fixture is
active) and the node processes (``server["env"]``) get AWS variables pointing at empty config
files, no profile or session token, instance metadata off, proxies off for 127.0.0.1, and
``AWS_ENDPOINT_URL`` = the local server, so even a client built without an endpoint stays here.

Use it with ``pytest_plugins = ["s3_server"]`` in a test module (no other import of this
module, so pytest can rewrite its asserts), then the fixtures ``s3_server`` (one server per
module) and ``s3_root`` (a fresh ``bucket/prefix`` per test); or, outside pytest,
``running_s3_server(log_dir)`` as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from procs import ProcessGroup, child_env, free_port

BUCKET = "pyfed-test"
USER = "pyfed-node"  # the IAM user whose access key the fixture hands out
REGION = "us-east-1"
# The key moto accepts before enforcement starts; refused afterwards (it is in no IAM record).
BOOTSTRAP_KEY = "testing"
START_TIMEOUT = 30.0
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_CREDENTIAL_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def isolated_aws_env(config_dir: Path, endpoint_url: str) -> dict[str, str | None]:
    """AWS variables that keep boto/s3fs on the local server (None = remove the variable)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config").write_text("")
    (config_dir / "credentials").write_text("")
    env: dict[str, str | None] = {name: None for name in _PROXY_VARS + _CREDENTIAL_VARS}
    env.update({
        "AWS_ACCESS_KEY_ID": BOOTSTRAP_KEY,
        "AWS_SECRET_ACCESS_KEY": BOOTSTRAP_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(config_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def apply_env(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(base)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _wait_until_answering(endpoint_url: str, proc, group: ProcessGroup, name: str) -> None:
    """Bounded: the server answers HTTP within START_TIMEOUT, or the test fails with its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{group.output(name)}")
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer within {START_TIMEOUT} s:\n{group.output(name)}")


def _create_user_and_bucket(endpoint_url: str) -> dict[str, str]:
    """An IAM user allowed everything, its access key, and the bucket (before enforcement)."""
    import boto3

    common = dict(endpoint_url=endpoint_url, region_name=REGION,
                  aws_access_key_id=BOOTSTRAP_KEY, aws_secret_access_key=BOOTSTRAP_KEY)
    iam = boto3.client("iam", **common)
    iam.create_user(UserName=USER)
    iam.put_user_policy(UserName=USER, PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    boto3.client("s3", **common).create_bucket(Bucket=BUCKET)
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def _enforce_credentials(endpoint_url: str) -> None:
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["status"] == "ok"


@contextlib.contextmanager
def running_s3_server(log_dir: Path, enforce_auth: bool = True):
    """Start moto_server on 127.0.0.1, yield how to reach it, always end it by its PID.

    Yields ``{"endpoint_url", "bucket", "storage_options", "user", "env", "log"}``:
    ``storage_options`` (key, secret, client_kwargs with endpoint_url and region) go straight
    to fsspec/s3fs; ``user`` is the IAM user owning that key; ``env`` is the environment for
    node processes (``procs.child_env()`` plus the AWS isolation)."""
    log_dir = Path(log_dir)
    port = free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    aws_env = isolated_aws_env(log_dir / "aws", endpoint_url)
    env = apply_env(child_env(), aws_env)
    with ProcessGroup(log_dir) as group, pytest.MonkeyPatch.context() as patch:
        for name, value in aws_env.items():  # this process's boto/s3fs stay local too
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        proc = group.start("moto_server", [sys.executable, "-m", "moto.server",
                                           "-H", "127.0.0.1", "-p", port], env=env)
        _wait_until_answering(endpoint_url, proc, group, "moto_server")
        credentials = _create_user_and_bucket(endpoint_url)
        if enforce_auth:
            _enforce_credentials(endpoint_url)
        yield {
            "endpoint_url": endpoint_url,
            "bucket": BUCKET,
            "storage_options": {
                **credentials,
                "client_kwargs": {"endpoint_url": endpoint_url, "region_name": REGION},
            },
            "user": USER,
            "env": env,
            "log": log_dir / "moto_server.log",
        }


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """One moto server per test module (IAM enforced); see :func:`running_s3_server`."""
    with running_s3_server(tmp_path_factory.mktemp("s3_server")) as server:
        yield server


@pytest.fixture
def s3_root(s3_server, request) -> str:
    """A fresh ``bucket/prefix`` per test (tests sharing one server never see each other's
    files); the folder URL is ``"s3://" + s3_root``."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]  # no glob characters
    return f"{s3_server['bucket']}/{label}-{os.getpid()}-{time.monotonic_ns()}"
