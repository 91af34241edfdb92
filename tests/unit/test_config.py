import pytest

from gatehouse import names
from gatehouse.config import ConfigError, Settings


def test_settings_read_once_from_the_environment():
    s = Settings.from_env({names.ENV_LOG_BUCKET: "b", names.ENV_MAX_ROWS: "10"})
    assert s.log_bucket == "b" and s.max_rows == 10 and s.requests_table == names.REQUESTS_TABLE


def test_settings_round_trip_through_the_lambda_environment():
    s = Settings(log_bucket="b", statement_timeout_ms=1234)
    assert Settings.from_env(s.as_env()) == s


@pytest.mark.parametrize(
    "env",
    [
        {},
        {names.ENV_LOG_BUCKET: "b", names.ENV_MAX_ROWS: "ten"},
        {names.ENV_LOG_BUCKET: "b", names.ENV_STATEMENT_TIMEOUT_MS: "-1"},
    ],
)
def test_bad_settings_stop_startup(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)
