"""What deploy/ ships: a least-privilege IAM policy that grants exactly the AWS actions the code calls."""

from __future__ import annotations

import json
import os
import re

from testkit.localdev import ROOT

# boto3 client method -> the IAM actions it needs (HEAD needs GetObject; HeadBucket and the
# listings need ListBucket; the managed upload may create and abort a multipart upload)
S3_ACTIONS = {"get_object": {"s3:GetObject"}, "head_object": {"s3:GetObject"}, "put_object": {"s3:PutObject"},
              "upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"}, "delete_object": {"s3:DeleteObject"},
              "delete_objects": {"s3:DeleteObject"},
              "head_bucket": {"s3:ListBucket"}, "list_objects_v2": {"s3:ListBucket"}}
GLUE = ("get_database", "create_database", "get_table", "create_table", "get_partition", "create_partition",
        "update_partition", "delete_partition")
# What pyiceberg's GlueCatalog calls for --iceberg-table (find, create, commit, delete: each commit is an
# UpdateTable with the table's VersionId); observed, not assumed: tests/unit/infer/test_iceberg_table.py records them.
ICEBERG_GLUE = {"glue:GetDatabase", "glue:CreateDatabase", "glue:GetTable", "glue:CreateTable", "glue:UpdateTable"}


def _source() -> str:
    text = []
    for package in ("common", "prepare", "infer"):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, package, name)) as f:
                    text.append(f.read())
    return "\n".join(text)


def required_actions() -> set[str]:
    """The IAM actions of every AWS call in the shipped packages."""
    src = _source()
    calls = set(re.findall(r"\.([a-z_0-9]+)\(", src)) | set(re.findall(r'get_paginator\("([a-z_0-9]+)"\)', src))
    needed = set().union(*(S3_ACTIONS[c] for c in calls if c in S3_ACTIONS))
    needed |= {"glue:" + "".join(w.capitalize() for w in c.split("_")) for c in calls if c in GLUE}
    if "GlueCatalog" in src:  # --iceberg-table: the catalog calls Glue itself
        needed |= ICEBERG_GLUE
    if "SSEKMSKeyId" in src:  # --sse aws:kms: S3 asks KMS for a data key on PUT and to decrypt on GET
        needed |= {"kms:GenerateDataKey", "kms:Decrypt"}
    return needed


def test_the_iam_policy_grants_exactly_the_actions_the_code_calls():
    with open(os.path.join(ROOT, "deploy", "iam-policy.json")) as f:
        policy = json.load(f)
    assert policy["Version"] == "2012-10-17"
    granted = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and st["Sid"] and st["Resource"]
        assert all("*" not in a for a in st["Action"]), st["Sid"]  # no wildcard actions
        granted |= set(st["Action"])
    needed = required_actions()
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "glue:CreatePartition"} <= needed  # the scan works
    assert granted == needed, (sorted(granted - needed), sorted(needed - granted))
    glue_st = next(st for st in policy["Statement"] if st["Sid"] == "OnlyWithGlueDatabaseAndGlueTable")
    assert all(a.startswith("glue:") for a in glue_st["Action"])
