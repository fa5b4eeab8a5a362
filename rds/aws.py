"""The RDS adapter: a small class around boto3's RDS client, and what AWS errors mean to pgop.

The endpoint and region are explicit so tests point it at the moto server and production at AWS.
botocore retries throttling and transient faults itself (retry mode `standard` or `adaptive`);
what is still failing after that is classified here as retryable (kopf retries with backoff) or
permanent (the user has to change something), with a reason for the MysqlDb conditions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from pgop.rds.instance import DbInstance

log = logging.getLogger(__name__)

# Codes that heal by waiting. botocore's retry modes already retried them a few times.
RETRYABLE_CODES = {
    "Throttling": "Throttled",
    "ThrottlingException": "Throttled",
    "ThrottledException": "Throttled",
    "RequestLimitExceeded": "Throttled",
    "RequestThrottled": "Throttled",
    "RequestThrottledException": "Throttled",
    "TooManyRequestsException": "Throttled",
    "SlowDown": "Throttled",
    "ServiceUnavailable": "AwsUnavailable",
    "InternalFailure": "AwsUnavailable",
    "InternalError": "AwsUnavailable",
    "RequestTimeout": "AwsUnavailable",
    "RequestTimeoutException": "AwsUnavailable",
    "InvalidDBInstanceState": "InstanceBusy",
    "InvalidDBInstanceStateFault": "InstanceBusy",
    "InvalidDBSnapshotState": "InstanceBusy",
    "SnapshotQuotaExceeded": "SnapshotQuotaExceeded",
    "InsufficientDBInstanceCapacity": "InsufficientCapacity",
    "ExpiredToken": "AwsCredentialsExpired",
    "ExpiredTokenException": "AwsCredentialsExpired",
}

# Codes that need a person: a spec change, a quota raise, a permission.
PERMANENT_CODES = {
    "InstanceQuotaExceeded": "QuotaExceeded",
    "StorageQuotaExceeded": "QuotaExceeded",
    "DBInstanceQuotaExceeded": "QuotaExceeded",
    "DBSubnetGroupNotFoundFault": "SubnetGroupNotFound",
    "DBParameterGroupNotFound": "ParameterGroupNotFound",
    "StorageTypeNotSupported": "InvalidStorage",
    "InvalidVPCNetworkStateFault": "InvalidNetwork",
    "KMSKeyNotAccessibleFault": "KmsKeyNotAccessible",
    "AccessDenied": "AccessDenied",
    "AccessDeniedException": "AccessDenied",
    "UnauthorizedOperation": "AccessDenied",
    "AuthFailure": "AccessDenied",
    "InvalidClientTokenId": "AccessDenied",
    "SignatureDoesNotMatch": "AccessDenied",
    "UnrecognizedClientException": "AccessDenied",
    "DBSnapshotAlreadyExists": "SnapshotAlreadyExists",
    "DBInstanceAlreadyExists": "IdentifierTaken",
    "DBInstanceNotFound": "InstanceNotFound",
    "DBInstanceNotFoundFault": "InstanceNotFound",
    "DBSnapshotNotFound": "RestoreSourceNotFound",
    "DBSnapshotNotFoundFault": "RestoreSourceNotFound",
    "PointInTimeRestoreNotEnabled": "InvalidRestore",
    "PointInTimeRestoreNotEnabledFault": "InvalidRestore",
    "InvalidRestoreFault": "InvalidRestore",
    "DBSecurityGroupNotFound": "SecurityGroupNotFound",
    "DBParameterGroupNotFoundFault": "ParameterGroupNotFound",
    "DBSubnetGroupNotFound": "SubnetGroupNotFound",
}


@dataclass(frozen=True)
class ErrorClass:
    retryable: bool
    reason: str


def classify(code: str, message: str = "") -> ErrorClass:
    """What an AWS error code (and, where AWS reuses one code for many things, its message) means."""
    if code in RETRYABLE_CODES:
        return ErrorClass(True, RETRYABLE_CODES[code])
    if code in PERMANENT_CODES:
        return ErrorClass(False, PERMANENT_CODES[code])
    if code in ("InvalidParameterCombination", "InvalidParameterValue", "InvalidParameter"):
        text = message.lower()
        if "deletion protection" in text or "protected db instance" in text:
            return ErrorClass(False, "DeletionProtected")
        if "dbinstanceclass" in text or "instance class" in text:
            return ErrorClass(False, "InvalidInstanceClass")
        if "version" in text:
            return ErrorClass(False, "InvalidEngineVersion")
        if "storage" in text:
            return ErrorClass(False, "InvalidStorage")
        return ErrorClass(False, "InvalidParameter")
    # An unknown code from a 5xx is more likely to heal than one from a 4xx; the caller passes
    # the HTTP status as "HTTP<n>" in that case.
    if code.startswith("HTTP5"):
        return ErrorClass(True, "AwsUnavailable")
    return ErrorClass(False, "AwsError")


class RdsError(Exception):
    """An RDS call that failed. Its text names the operation and AWS's code, never a secret."""

    def __init__(self, operation: str, code: str, message: str, klass: ErrorClass):
        self.operation = operation
        self.code = code
        self.aws_message = message
        self.retryable = klass.retryable
        self.reason = klass.reason
        super().__init__(f"{operation}: {code}: {message}" if message else f"{operation}: {code}")


def client_config(region: str, retry_mode: str = "standard", max_attempts: int = 5) -> botocore.config.Config:
    if retry_mode not in ("standard", "adaptive"):
        raise ValueError(f"retry mode {retry_mode!r}: use 'standard' or 'adaptive'")
    return botocore.config.Config(
        region_name=region,
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=30,
    )


class Rds:
    """The RDS calls pgop makes, with AWS errors turned into RdsError."""

    def __init__(self, client: Any):
        self._client = client

    @classmethod
    def connect(
        cls,
        *,
        region: str,
        endpoint_url: str | None = None,
        retry_mode: str = "standard",
        max_attempts: int = 5,
        session: boto3.session.Session | None = None,
    ) -> Rds:
        session = session or boto3.session.Session()
        client = session.client(
            "rds",
            endpoint_url=endpoint_url or None,
            config=client_config(region, retry_mode, max_attempts),
        )
        return cls(client)

    @property
    def client(self) -> Any:
        return self._client

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = getattr(self._client, operation)(**kwargs)
            return response
        except botocore.exceptions.ClientError as error:
            err = error.response.get("Error", {})
            code = err.get("Code") or f"HTTP{error.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '')}"
            message = err.get("Message", "")
            raise RdsError(operation, code, message, classify(code, message)) from None
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectionClosedError,
        ) as error:
            raise RdsError(operation, "Unreachable", type(error).__name__, ErrorClass(True, "AwsUnreachable")) from None
        except botocore.exceptions.ParamValidationError:
            # botocore's text may quote parameter values (the password among them): keep none of it.
            raise RdsError(operation, "ParamValidation", "invalid request parameters", ErrorClass(False, "InvalidParameter")) from None
        except botocore.exceptions.NoCredentialsError:
            raise RdsError(operation, "NoCredentials", "no AWS credentials found", ErrorClass(False, "AccessDenied")) from None

    def describe(self, identifier: str) -> DbInstance | None:
        try:
            found = self._call("describe_db_instances", DBInstanceIdentifier=identifier)
        except RdsError as error:
            if error.reason == "InstanceNotFound":
                return None
            raise
        instances = found.get("DBInstances") or []
        if not instances:
            return None
        instance = DbInstance.from_api(instances[0])
        if not instance.tags and instance.arn:
            # Real RDS includes TagList in DescribeDBInstances; fall back for endpoints that do not.
            instance = DbInstance.from_api({**instances[0], "TagList": self._tag_list(instance.arn)})
        return instance

    def _tag_list(self, arn: str) -> list[dict[str, str]]:
        tags: list[dict[str, str]] = self._call("list_tags_for_resource", ResourceName=arn).get("TagList") or []
        return tags

    def create(self, request: Mapping[str, Any], password: str) -> DbInstance:
        """CreateDBInstance. `request` holds everything but the password, so it can be logged."""
        created = self._call("create_db_instance", **request, MasterUserPassword=password)
        return DbInstance.from_api(created["DBInstance"])

    def modify(self, identifier: str, changes: Mapping[str, Any]) -> DbInstance:
        modified = self._call("modify_db_instance", DBInstanceIdentifier=identifier, **changes)
        return DbInstance.from_api(modified["DBInstance"])

    def restore(self, operation: str, request: Mapping[str, Any]) -> DbInstance:
        """RestoreDBInstanceFromDBSnapshot or RestoreDBInstanceToPointInTime (rds.policy.Restore)."""
        if operation not in ("restore_db_instance_from_db_snapshot", "restore_db_instance_to_point_in_time"):
            raise ValueError(f"not a restore operation: {operation}")
        restored = self._call(operation, **request)
        return DbInstance.from_api(restored["DBInstance"])

    def snapshots(self, identifier: str) -> list[dict[str, Any]]:
        """The DB snapshots of one instance (manual and automated), oldest first."""
        found: list[dict[str, Any]] = []
        marker = None
        while True:
            kwargs: dict[str, Any] = {"DBInstanceIdentifier": identifier}
            if marker:
                kwargs["Marker"] = marker
            page = self._call("describe_db_snapshots", **kwargs)
            found += page.get("DBSnapshots") or []
            marker = page.get("Marker")
            if not marker:
                break
        return sorted(found, key=lambda s: str(s.get("SnapshotCreateTime") or ""))

    def restorable_window(self, identifier: str) -> tuple[Any, Any] | None:
        """(earliest, latest) restorable times of an instance's automated backups, or None."""
        try:
            backups = self._call("describe_db_instance_automated_backups",
                                 DBInstanceIdentifier=identifier).get("DBInstanceAutomatedBackups") or []
        except RdsError:
            backups = []
        for backup in backups:
            window = backup.get("RestoreWindow") or {}
            if window.get("LatestTime"):
                return window.get("EarliestTime"), window.get("LatestTime")
        described = self._call("describe_db_instances", DBInstanceIdentifier=identifier).get("DBInstances") or []
        latest = described[0].get("LatestRestorableTime") if described else None
        return (None, latest) if latest else None

    def set_master_password(self, identifier: str, password: str) -> None:
        self._call(
            "modify_db_instance",
            DBInstanceIdentifier=identifier,
            MasterUserPassword=password,
            ApplyImmediately=True,
        )

    def add_tags(self, arn: str, tags: Mapping[str, str]) -> None:
        if tags:
            self._call("add_tags_to_resource", ResourceName=arn,
                       Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])

    def remove_tags(self, arn: str, keys: Iterable[str]) -> None:
        keys = sorted(keys)
        if keys:
            self._call("remove_tags_from_resource", ResourceName=arn, TagKeys=keys)

    def delete(self, identifier: str, *, final_snapshot: str | None, delete_automated_backups: bool) -> None:
        kwargs: dict[str, Any] = {"DBInstanceIdentifier": identifier,
                                  "DeleteAutomatedBackups": delete_automated_backups}
        if final_snapshot:
            kwargs["FinalDBSnapshotIdentifier"] = final_snapshot
        else:
            kwargs["SkipFinalSnapshot"] = True
        self._call("delete_db_instance", **kwargs)

    def snapshot_exists(self, snapshot_identifier: str) -> bool:
        try:
            found = self._call("describe_db_snapshots", DBSnapshotIdentifier=snapshot_identifier)
        except RdsError as error:
            if error.code in ("DBSnapshotNotFound", "DBSnapshotNotFoundFault"):
                return False
            raise
        return bool(found.get("DBSnapshots"))
