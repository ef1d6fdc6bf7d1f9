"""ObjectStoreConfig: PROXY_STORE_* values parsed with clear errors, keys never shown."""

from __future__ import annotations

import os
import subprocess

import pytest

from proxy.settings import Settings, SettingsError
from proxy.stores.objects import ObjectStore
from proxy.stores.objects_config import ObjectStoreConfig, ObjectStoreConfigError
from tests.servers import cutproxy

ACCESS = "AKIAEXAMPLEACCESS0001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_url_gives_bucket_and_prefix() -> None:
    config = ObjectStoreConfig.from_url("s3://images/cutproxy/prod/")
    assert (config.bucket, config.prefix) == ("images", "cutproxy/prod")
    assert config.url == "s3://images/cutproxy/prod"
    assert ObjectStoreConfig.from_url("s3://images").prefix == ""


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://images/x", "must look like s3://bucket"),
        ("s3://", "must look like s3://bucket"),
        ("images/x", "must look like s3://bucket"),
        ("s3://key:secret@images/x", "takes only a bucket and a prefix"),
        ("s3://images/x?region=eu", "takes only a bucket and a prefix"),
        ("s3://Images/x", "not a valid S3 bucket name"),
        ("s3://ab", "not a valid S3 bucket name"),
        ("s3://images/a//b", "prefix"),
        ("s3://images/a/../b", "prefix"),
    ],
)
def test_bad_urls_name_the_variable(url: str, fragment: str) -> None:
    with pytest.raises(ObjectStoreConfigError, match="PROXY_STORE_URL") as caught:
        ObjectStoreConfig.from_url(url)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"endpoint": "127.0.0.1:8333"}, "PROXY_STORE_ENDPOINT"),
        ({"endpoint": "http://127.0.0.1:8333/bucket"}, "PROXY_STORE_ENDPOINT"),
        ({"endpoint": f"http://{ACCESS}:{SECRET}@127.0.0.1:8333"}, "PROXY_STORE_ENDPOINT"),
        ({"access_key": ACCESS}, "PROXY_STORE_SECRET_KEY"),
        ({"secret_key": SECRET}, "PROXY_STORE_ACCESS_KEY"),
        ({"addressing_style": "dns"}, "PROXY_STORE_ADDRESSING"),
        ({"timeout": 0}, "PROXY_STORE_TIMEOUT"),
        ({"region": " "}, "PROXY_STORE_REGION"),
    ],
)
def test_bad_values_name_the_variable(values: dict[str, object], variable: str) -> None:
    with pytest.raises(ObjectStoreConfigError, match=variable) as caught:
        ObjectStoreConfig.from_url("s3://images", **values)  # type: ignore[arg-type]
    assert SECRET not in str(caught.value) and ACCESS not in str(caught.value)


def test_repr_masks_both_keys() -> None:
    config = ObjectStoreConfig.from_url(
        "s3://images/p", endpoint="http://127.0.0.1:8333", access_key=ACCESS, secret_key=SECRET
    )
    for text in (repr(config), str(config), repr(ObjectStore(config)), f"{config}"):
        assert ACCESS not in text and SECRET not in text
        assert "access_key='***'" in text and "secret_key='***'" in text
        assert "s3://images/p" in text


def test_addressing_defaults_to_path_with_an_endpoint_and_virtual_on_aws() -> None:
    local = ObjectStoreConfig.from_url("s3://images", endpoint="http://127.0.0.1:8333/")
    assert local.style == "path"
    kwargs = local.client_kwargs()
    assert kwargs["endpoint"] == "http://127.0.0.1:8333"
    assert kwargs["virtual_hosted_style_request"] is False
    assert kwargs["client_options"]["allow_http"] is True  # type: ignore[index]

    aws = ObjectStoreConfig.from_url("s3://images/p", region="eu-west-1")
    assert aws.style == "virtual"
    kwargs = aws.client_kwargs()
    assert "endpoint" not in kwargs and kwargs["region"] == "eu-west-1"
    assert kwargs["virtual_hosted_style_request"] is True
    assert kwargs["prefix"] == "p"
    assert kwargs["client_options"]["allow_http"] is False  # type: ignore[index]


def test_virtual_addressing_puts_the_bucket_in_the_endpoint_host() -> None:
    config = ObjectStoreConfig.from_url(
        "s3://images", endpoint="https://s3.example.net:9000", addressing_style="virtual"
    )
    assert config.client_kwargs()["endpoint"] == "https://images.s3.example.net:9000"


def test_errors_drop_the_keys_even_when_the_server_quotes_them() -> None:
    # AWS's SignatureDoesNotMatch body quotes the access key id (SeaweedFS's does not).
    config = ObjectStoreConfig.from_url(
        "s3://images", endpoint="http://127.0.0.1:9", access_key=ACCESS, secret_key=SECRET
    )
    reply = (
        "<Error><Code>SignatureDoesNotMatch</Code>"
        f"<AWSAccessKeyId>{ACCESS}</AWSAccessKeyId><StringToSign>{SECRET}?</StringToSign></Error>"
    )
    error = ObjectStore(config)._failed("get", RuntimeError(reply))
    assert "SignatureDoesNotMatch" in error.detail
    for text in (error.message, error.detail, str(error), repr(error)):
        assert ACCESS not in text and SECRET not in text


# --- PROXY_STORE_* as settings ----------------------------------------------------------------

STORE_ENV = {
    "PROXY_MODE": "store",
    "PROXY_STORE_URL": "s3://images/cutproxy",
    "PROXY_STORE_ENDPOINT": "http://127.0.0.1:8333",
    "PROXY_STORE_ACCESS_KEY": ACCESS,
    "PROXY_STORE_SECRET_KEY": SECRET,
}


def test_the_settings_give_the_store_configuration() -> None:
    settings = Settings.from_env({**STORE_ENV, "PROXY_STORE_ADDRESSING": "virtual"})
    config = ObjectStoreConfig.from_settings(settings)
    assert config is not None
    assert (config.bucket, config.prefix, config.style) == ("images", "cutproxy", "virtual")
    assert (config.access_key, config.secret_key, config.timeout) == (ACCESS, SECRET, 10.0)
    assert ObjectStoreConfig.from_settings(Settings.from_env({"PROXY_MODE": "store"})) is None


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"PROXY_STORE_URL": "s3://images"}, "PROXY_STORE_URL", "needs PROXY_MODE=store"),
        ({"PROXY_STORE_ENDPOINT": "http://127.0.0.1:8333"}, "PROXY_STORE_ENDPOINT", "needs"),
        ({"PROXY_STORE_ACCESS_KEY": ACCESS}, "PROXY_STORE_ACCESS_KEY", "PROXY_STORE_URL"),
        ({**STORE_ENV, "PROXY_STORE_TIMEOUT": "0"}, "PROXY_STORE_TIMEOUT", "greater than 0"),
        ({"PROXY_STORE_PUBLIC_URL": "https://cdn.example"}, "PROXY_STORE_PUBLIC_URL", "needs"),
        (
            {**STORE_ENV, "PROXY_STORE_PUBLIC_URL": "cdn.example/images"},
            "PROXY_STORE_PUBLIC_URL",
            "absolute http(s) URL",
        ),
    ],
)
def test_store_settings_that_cannot_work_are_refused_naming_the_variable(
    env: dict[str, str], variable: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(variable) and fragment in str(caught.value)
    assert ACCESS not in str(caught.value)


def test_store_keys_are_masked_wherever_settings_are_shown() -> None:
    shown = Settings.from_env(STORE_ENV).describe()
    assert shown["PROXY_STORE_ACCESS_KEY"] == shown["PROXY_STORE_SECRET_KEY"] == "***"
    assert shown["PROXY_STORE_URL"] == "s3://images/cutproxy"
    done = subprocess.run(
        cutproxy("settings"), env={**os.environ, **STORE_ENV}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "PROXY_STORE_ACCESS_KEY=***" in done.stdout
    assert ACCESS not in done.stdout + done.stderr and SECRET not in done.stdout + done.stderr


def test_serve_refuses_to_start_with_a_malformed_store_setting() -> None:
    env = {**os.environ, **STORE_ENV, "PROXY_STORE_URL": "s3://Images/x"}
    done = subprocess.run(
        cutproxy("serve", "--port", "1"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "invalid setting: PROXY_STORE_URL" in done.stderr
    assert "not a valid S3 bucket name" in done.stderr
    assert ACCESS not in done.stderr and SECRET not in done.stderr
