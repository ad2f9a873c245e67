"""Independent SigV4 reference for the unit test in src/kinesis/sigv4.rs.

Signs the same request with botocore's SigV4Auth and prints the headers, so the
constant in the Rust test comes from another implementation, not from ours.
Run: .deps/venv/bin/python tests/sigv4_reference.py
"""
import datetime
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

BODY = b'{"StreamName":"s","Records":[{"Data":"e30=","PartitionKey":"k"}]}'
WHEN = datetime.datetime(2025, 11, 25, 21, 54, 8, tzinfo=datetime.timezone.utc)


def main():
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                        "session-token-example")
    req = AWSRequest(method="POST", url="http://127.0.0.1:4567/", data=BODY, headers={
        "content-type": "application/x-amz-json-1.1",
        "x-amz-target": "Kinesis_20131202.PutRecords",
    })
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN.replace(tzinfo=None)):
        SigV4Auth(creds, "kinesis", "us-east-1").add_auth(req)
    for k in ("X-Amz-Date", "X-Amz-Security-Token", "Authorization"):
        print(f"{k}: {req.headers[k]}")


if __name__ == "__main__":
    main()
