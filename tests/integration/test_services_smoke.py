"""The local services answer the real clients pgop uses: hvac, py-consul, boto3, psycopg."""
from __future__ import annotations

import uuid

import boto3
import botocore.config
import consul
import hvac
import psycopg
import pytest


def test_vault_kv2_write_then_read(local_env):
    client = hvac.Client(url=local_env["VAULT_ADDR"], token=local_env["VAULT_TOKEN"])
    assert client.is_authenticated()
    path = f"smoke/{uuid.uuid4().hex}"
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"username": "app", "port": "5432"},
                                                 mount_point="secret")
    read = client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                    raise_on_deleted_version=True)
    assert read["data"]["data"] == {"username": "app", "port": "5432"}
    assert read["data"]["metadata"]["version"] == 1
    # check-and-set: a write that expects version 0 of an existing secret is refused
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.secrets.kv.v2.create_or_update_secret(path=path, secret={"x": "y"}, cas=0,
                                                     mount_point="secret")


def test_consul_kv_put_then_get(local_env):
    host, port = local_env["CONSUL_HTTP_ADDR"].split(":")
    c = consul.Consul(host=host, port=int(port))
    key = f"smoke/{uuid.uuid4().hex}/host"
    assert c.kv.put(key, "orders-rw.shop.svc") is True
    _, item = c.kv.get(key)
    assert item["Value"] == b"orders-rw.shop.svc"
    c.kv.delete(key)
    assert c.kv.get(key)[1] is None


def _s3(local_env):
    return boto3.client("s3", endpoint_url=local_env["AWS_ENDPOINT_URL_S3"],
                        aws_access_key_id=local_env["S3_ACCESS_KEY_ID"],
                        aws_secret_access_key=local_env["S3_SECRET_ACCESS_KEY"],
                        region_name=local_env["AWS_DEFAULT_REGION"],
                        config=botocore.config.Config(s3={"addressing_style": "path"}))


def test_s3_multipart_upload_and_list(local_env):
    s3 = _s3(local_env)
    bucket = f"smoke-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    key = "base/20261122T000000/base.tar.zst"
    part1, part2 = b"a" * (5 << 20), b"b" * 1024  # every part but the last is >= 5 MiB
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=key)
    etags = [s3.upload_part(Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=n,
                            Body=body)["ETag"] for n, body in ((1, part1), (2, part2))]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=mpu["UploadId"],
                                 MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n}
                                                            for n, e in enumerate(etags, 1)]})
    s3.put_object(Bucket=bucket, Key="wal/000000010000000000000001", Body=b"wal")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="base/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(key, len(part1) + len(part2))]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body[:3] == b"aaa" and body[-3:] == b"bbb"
    for o in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        s3.delete_object(Bucket=bucket, Key=o["Key"])
    s3.delete_bucket(Bucket=bucket)


def test_s3_refuses_wrong_credentials(local_env):
    def client(access, secret):
        return boto3.client("s3", endpoint_url=local_env["AWS_ENDPOINT_URL_S3"],
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name=local_env["AWS_DEFAULT_REGION"])
    wrong_secret = client(local_env["S3_ACCESS_KEY_ID"], "not-the-secret")
    with pytest.raises(wrong_secret.exceptions.ClientError) as e:
        wrong_secret.list_buckets()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    # an unknown access key is refused too (versitygw says XAdminUserNotFound, AWS says
    # InvalidAccessKeyId)
    unknown = client("nobody", "nothing")
    with pytest.raises(unknown.exceptions.ClientError) as e:
        unknown.list_buckets()
    assert e.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "XAdminUserNotFound")


def test_rds_create_and_describe_on_moto(local_env):
    rds = boto3.client("rds", endpoint_url=local_env["PGOP_RDS_ENDPOINT"],
                       region_name=local_env["AWS_DEFAULT_REGION"],
                       aws_access_key_id=local_env["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=local_env["AWS_SECRET_ACCESS_KEY"])
    ident = f"smoke-{uuid.uuid4().hex[:8]}"
    rds.create_db_instance(DBInstanceIdentifier=ident, Engine="mysql", EngineVersion="8.0.35",
                           DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                           MasterUsername="admin", MasterUserPassword="not-a-real-secret-1",
                           DBName="orders", Tags=[{"Key": "pgop.io/name", "Value": "orders-db"}])
    db = rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
    assert db["Engine"] == "mysql" and db["DBName"] == "orders"
    assert db["Endpoint"]["Port"] == 3306
    assert {"Key": "pgop.io/name", "Value": "orders-db"} in db["TagList"]
    rds.delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True)


def test_local_postgres_runs_as_non_root(local_postgres):
    assert local_postgres.psql("select current_setting('server_version_num')::int / 10000") == "15"
    owner = local_postgres.psql("select pg_catalog.pg_get_userbyid(datdba) from pg_database where datname='postgres'")
    assert owner == "postgres"
    # the server process belongs to the postgres OS user, never root
    pid = int((local_postgres.pgdata / "postmaster.pid").read_text().split()[0])
    uid = int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0])
    assert uid != 0
    local_postgres.psql("create role app login password 'app-pw-for-test'")
    with psycopg.connect(host="127.0.0.1", port=local_postgres.port, dbname="postgres",
                         user="app", password="app-pw-for-test") as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app"
