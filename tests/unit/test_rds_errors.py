"""AWS error classification, and the adapter's handling of errors, with botocore's Stubber.

Stubber is used here because moto cannot reproduce these answers: moto never throttles, accepts any
engine version and class, and has no instance quota.
"""

import boto3
import pytest
from botocore.stub import Stubber

from pgop.rds.aws import Rds, RdsError, classify, client_config


@pytest.mark.parametrize("code", ["Throttling", "ThrottlingException", "RequestLimitExceeded",
                                  "TooManyRequestsException", "ServiceUnavailable", "InternalFailure",
                                  "InvalidDBInstanceState"])
def test_retryable(code):
    assert classify(code).retryable


@pytest.mark.parametrize("code,message,reason", [
    ("InvalidParameterCombination", "Cannot find version 8.0.99 for mysql", "InvalidEngineVersion"),
    ("InvalidParameterCombination",
     "RDS does not support creating a DB instance with the following combination: DBInstanceClass=db.x9.huge, "
     "Engine=mysql, EngineVersion=8.0.35, LicenseModel=general-public-license.", "InvalidInstanceClass"),
    ("InvalidParameterValue", "Invalid DB engine version", "InvalidEngineVersion"),
    ("InstanceQuotaExceeded", "DB Instance quota exceeded", "QuotaExceeded"),
    ("StorageQuotaExceeded", "", "QuotaExceeded"),
    ("InvalidParameterCombination", "Cannot delete protected DB Instance, please disable deletion protection",
     "DeletionProtected"),
    ("AccessDenied", "not authorized", "AccessDenied"),
    ("SomethingNew", "", "AwsError"),
])
def test_permanent(code, message, reason):
    klass = classify(code, message)
    assert not klass.retryable
    assert klass.reason == reason


def test_unknown_5xx_is_retryable():
    assert classify("HTTP503").retryable


def stubbed():
    client = boto3.client("rds", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y",
                          config=client_config("us-east-1", "standard", 1))
    return Rds(client), Stubber(client)


def test_throttled_describe_becomes_a_retryable_rds_error():
    rds, stub = stubbed()
    stub.add_client_error("describe_db_instances", service_error_code="Throttling",
                          service_message="Rate exceeded", http_status_code=400)
    with stub, pytest.raises(RdsError) as raised:
        rds.describe("x")
    assert raised.value.retryable and raised.value.reason == "Throttled"
    assert "describe_db_instances: Throttling" in str(raised.value)


def test_not_found_is_none():
    rds, stub = stubbed()
    stub.add_client_error("describe_db_instances", service_error_code="DBInstanceNotFound", http_status_code=404)
    with stub:
        assert rds.describe("x") is None


def test_create_error_never_carries_the_password():
    rds, stub = stubbed()
    stub.add_client_error("create_db_instance", service_error_code="InvalidParameterCombination",
                          service_message="Cannot find version 8.0.99 for mysql")
    password = "Sup3rSecretValue123456"
    request = {"DBInstanceIdentifier": "x", "Engine": "mysql", "EngineVersion": "8.0.99",
               "DBInstanceClass": "db.t3.micro", "AllocatedStorage": 20, "MasterUsername": "dbadmin"}
    with stub, pytest.raises(RdsError) as raised:
        rds.create(request, password)
    assert raised.value.reason == "InvalidEngineVersion" and not raised.value.retryable
    assert password not in str(raised.value) and password not in repr(raised.value.__dict__)


def test_parameter_validation_text_is_not_repeated():
    rds, _ = stubbed()
    with pytest.raises(RdsError) as raised:
        rds.create({"DBInstanceIdentifier": "x", "Engine": "mysql", "AllocatedStorage": "not-a-number",
                    "DBInstanceClass": "db.t3.micro"}, "Pw-should-not-leak-1")
    assert "Pw-should-not-leak-1" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_retry_mode_is_checked():
    with pytest.raises(ValueError):
        client_config("us-east-1", "legacy")
    assert client_config("us-east-1", "adaptive").retries == {"mode": "adaptive", "max_attempts": 5}
