"""Serverless federation through real S3: a moto_server process on 127.0.0.1, reached by s3fs
over HTTP exactly as AWS would be, with IAM credentials enforced by the server (s3_server.py).

First the raw path PyFed relies on (a PUT is one atomic object, a listing sees new objects),
then the faults: an unreachable endpoint, refused credentials and a missing bucket each fail
in one line naming the URL and the endpoint.
"""

from __future__ import annotations

import threading

import pytest

from procs import free_port
from pyfed.errors import StorageError
from pyfed.serverless import FederatedNode
from pyfed.serverless.s3 import check_s3_folder, s3_storage_options
from pyfed.serverless.storage import open_folder

s3fs = pytest.importorskip("s3fs")
pytest_plugins = ["s3_server"]


def filesystem(storage_options: dict):
    """A fresh s3fs client (no instance cache: each test sees the server, not a shared cache)."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options(storage_options))


def test_put_get_list_remove_through_http(s3_server, s3_root):
    fs = filesystem(s3_server["storage_options"])
    root = s3_root
    fs.pipe_file(f"{root}/updates/a/00000000.pyfd", b"first")
    fs.pipe_file(f"{root}/updates/b/00000000.pyfd", b"second")
    assert fs.cat_file(f"{root}/updates/a/00000000.pyfd") == b"first"
    assert sorted(fs.find(f"{root}/updates")) == [f"{root}/updates/a/00000000.pyfd",
                                                  f"{root}/updates/b/00000000.pyfd"]

    # Another client (another node) sees a new object at its next listing: no stale cache.
    other = filesystem(s3_server["storage_options"])
    assert len(other.find(f"{root}/updates")) == 2
    fs.pipe_file(f"{root}/updates/c/00000000.pyfd", b"third")
    assert len(other.find(f"{root}/updates")) == 3

    fs.rm_file(f"{root}/updates/a/00000000.pyfd")
    fs.rm_file(f"{root}/updates/a/00000000.pyfd")  # removing what is gone is not an error
    assert len(other.find(f"{root}/updates")) == 2
    assert other.find(f"{root}/nothing-here") == []


def test_a_put_is_one_request_and_readers_never_see_half_an_object(s3_server, s3_root):
    """What storage.put relies on: pipe_file is a single PUT, so a reader racing a writer gets
    the old object or the new one, whole, never a mix or a prefix."""
    fs = filesystem(s3_server["storage_options"])
    key = f"{s3_root}/update.pyfd"
    old, new = b"\x01" * (3 << 20), b"\x02" * (3 << 20) + b"\x03" * 1000
    fs.pipe_file(key, old)
    log_before = s3_server["log"].read_text(errors="replace")
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def read_repeatedly():
        reader = filesystem(s3_server["storage_options"])
        try:
            for _ in range(20):
                seen.append(reader.cat_file(key))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=read_repeatedly)
    thread.start()
    for _ in range(4):
        fs.pipe_file(key, new)
        fs.pipe_file(key, old)
    fs.pipe_file(key, new)
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert seen and all(body in (old, new) for body in seen), {len(body) for body in seen}
    assert fs.cat_file(key) == new
    # Nine writes, nine PUT requests on the object itself (no multipart: no ?uploadId= parts).
    path = "/" + key.split("/", 1)[1]
    new_lines = s3_server["log"].read_text(errors="replace")[len(log_before):].splitlines()
    puts = [line for line in new_lines if f'"PUT /{s3_server["bucket"]}{path}' in line]
    assert len(puts) == 9 and not any("uploadId" in line for line in puts), puts


def test_unreachable_endpoint_fails_in_one_line_naming_the_url():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
    with pytest.raises(StorageError) as caught:
        FederatedNode("s3://bucket/prefix", "a", storage_options=options)
    assert str(caught.value) == (f"cannot reach S3 at {endpoint} for s3://bucket/prefix: "
                                 f"connection refused")


@pytest.mark.parametrize("wrong", ["key", "secret"])
def test_wrong_credentials_fail_in_one_line_naming_the_url(s3_server, s3_root, wrong):
    options = dict(s3_server["storage_options"], **{wrong: "not-the-right-one"})
    with pytest.raises(StorageError) as caught:
        FederatedNode(f"s3://{s3_root}", "a", storage_options=options)
    code = {"key": "InvalidAccessKeyId", "secret": "SignatureDoesNotMatch"}[wrong]
    assert str(caught.value) == (f"S3 at {s3_server['endpoint_url']} refused the credentials "
                                 f"for s3://{s3_root} ({code})")


def test_missing_bucket_says_so_and_is_not_created(s3_server):
    options = s3_server["storage_options"]
    with pytest.raises(StorageError) as caught:
        FederatedNode("s3://no-such-bucket/prefix", "a", storage_options=options)
    assert str(caught.value) == (f"S3 bucket 'no-such-bucket' does not exist at "
                                 f"{s3_server['endpoint_url']} (for s3://no-such-bucket/prefix)")
    assert not filesystem(options).exists("no-such-bucket")


def test_a_new_prefix_in_an_existing_bucket_is_a_new_empty_folder(s3_server, s3_root):
    options = s3_server["storage_options"]
    check_s3_folder(filesystem(options), s3_root, f"s3://{s3_root}", options)  # no error
    assert filesystem(options).find(s3_root) == []


def test_a_key_revoked_during_the_run_fails_in_one_line_naming_the_file(s3_server, s3_root):
    """The node's access key is deleted in IAM while its folder is open: the next request is
    refused by the server, and the error names the file and the endpoint."""
    import boto3

    options = s3_server["storage_options"]
    iam = boto3.client("iam", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1",
                       aws_access_key_id=options["key"], aws_secret_access_key=options["secret"])
    key = iam.create_access_key(UserName=s3_server["user"])["AccessKey"]
    folder = open_folder(f"s3://{s3_root}", dict(options, key=key["AccessKeyId"],
                                                 secret=key["SecretAccessKey"]))
    folder.put("updates/a/00000000.pyfd", b"data")
    with pytest.raises(StorageError) as caught:
        folder.get("updates/a/00000001.pyfd")
    assert type(caught.value).__name__ == "FileGone"  # a peer removed it: not a failure

    iam.delete_access_key(UserName=s3_server["user"], AccessKeyId=key["AccessKeyId"])
    with pytest.raises(StorageError) as caught:
        folder.put("updates/a/00000001.pyfd", b"data")
    assert str(caught.value) == (f"S3 at {s3_server['endpoint_url']} refused the credentials "
                                 f"for s3://{s3_root}/updates/a/00000001.pyfd (InvalidAccessKeyId)")
    with pytest.raises(StorageError) as caught:
        folder.get("updates/a/00000000.pyfd")
    # A read starts with a HEAD, whose answer has no body to say why: just "403".
    assert str(caught.value) == (f"S3 at {s3_server['endpoint_url']} refused access to "
                                 f"s3://{s3_root}/updates/a/00000000.pyfd "
                                 f"(403 Forbidden: wrong credentials or no permission)")
