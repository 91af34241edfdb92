"""gatehouse.aws.session: boto3 sessions whose botocore loader is cheaper at a cold start must
know the same services, load the same models and still refuse what botocore refuses."""

from __future__ import annotations

import boto3
import pytest
from boto3.exceptions import ResourceNotExistsError
from botocore.exceptions import DataNotFoundError, UnknownServiceError
from moto import mock_aws

from gatehouse import aws

SERVICES = ("dynamodb", "s3", "secretsmanager", "stepfunctions", "lambda")


def _stock() -> boto3.session.Session:
    return boto3.session.Session(region_name="us-east-1")


def test_the_session_knows_every_service_botocore_knows():
    assert aws.session(region_name="us-east-1").get_available_services() == _stock().get_available_services()


@pytest.mark.parametrize("service", SERVICES)
def test_a_services_model_and_endpoint_rules_load_as_botocore_loads_them(service: str):
    ours = aws.session(region_name="us-east-1")._session
    stock = _stock()._session
    assert ours.get_service_data(service) == stock.get_service_data(service)
    ours_rules = ours.get_component("data_loader").load_service_model(service, "endpoint-rule-set-1")
    stock_rules = stock.get_component("data_loader").load_service_model(service, "endpoint-rule-set-1")
    assert ours_rules == stock_rules


def test_an_unknown_service_or_api_version_is_still_refused():
    session = aws.session(region_name="us-east-1")
    with pytest.raises(UnknownServiceError):
        session.client("no-such-service")
    with pytest.raises(DataNotFoundError):
        session.client("dynamodb", api_version="1999-01-01")


def test_a_service_without_boto3_resources_is_refused_as_boto3_refuses_it():
    # secretsmanager has a client model and no resources-1 file.
    with pytest.raises(ResourceNotExistsError):
        aws.session(region_name="us-east-1").resource("secretsmanager")
    assert aws.session(region_name="us-east-1").resource("dynamodb").meta.service_name == "dynamodb"


def test_clients_work_against_aws(aws_env: None):
    with mock_aws():
        session = aws.session()
        s3 = session.client("s3")
        s3.create_bucket(Bucket="gatehouse-test-bucket")
        s3.put_object(Bucket="gatehouse-test-bucket", Key="k", Body=b"v")
        assert s3.get_object(Bucket="gatehouse-test-bucket", Key="k")["Body"].read() == b"v"
        secrets = session.client("secretsmanager")
        secrets.create_secret(Name="s", SecretString="x")
        assert secrets.get_secret_value(SecretId="s")["SecretString"] == "x"


def test_aws_data_path_is_searched_first(tmp_path, monkeypatch: pytest.MonkeyPatch):
    # A folder on AWS_DATA_PATH overrides botocore's own data, as botocore's loader does.
    extras = tmp_path / "dynamodb" / "2012-08-10"
    extras.mkdir(parents=True)
    (extras / "service-2.sdk-extras.json").write_text(
        '{"version": 1.0, "merge": {"metadata": {"serviceFullName": "Overridden"}}}'
    )
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    data = aws.session(region_name="us-east-1")._session.get_service_data("dynamodb")
    assert data["metadata"]["serviceFullName"] == "Overridden"
