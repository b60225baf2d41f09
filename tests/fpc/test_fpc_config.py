"""``--scheduler``: classic or fpc, also read from OpenWhisk's own InvokerProvider setting."""

from __future__ import annotations

import pytest

from invoker.config import ConfigError, load_config

OW = "org.apache.openwhisk.core.invoker."


def test_classic_is_the_default():
    assert load_config([], env={}).scheduler == "classic"


@pytest.mark.parametrize(("value", "scheduler"), [
    ("fpc", "fpc"), ("FPC", "fpc"), ("classic", "classic"),
    (OW + "FPCInvokerReactive", "fpc"), (OW + "InvokerReactive", "classic"),
])
def test_the_scheduler_is_named_or_read_from_the_invoker_provider(value, scheduler):
    assert load_config([], env={"CONFIG_whisk_spi_InvokerProvider": value}).scheduler == scheduler
    assert load_config(["--scheduler", value], env={}).scheduler == scheduler


def test_the_option_wins_over_openwhisk_s_setting():
    env = {"CONFIG_whisk_spi_InvokerProvider": OW + "FPCInvokerReactive"}
    assert load_config(["--scheduler", "classic"], env=env).scheduler == "classic"


@pytest.mark.parametrize("value", ["kubernetes", OW + "SomeOtherReactive", ""])
def test_anything_else_is_refused(value):
    with pytest.raises(ConfigError, match="--scheduler"):
        load_config(["--scheduler", value], env={})


def test_fpc_settings_are_read_and_checked():
    config = load_config(["--scheduler", "fpc"], env={"CONFIG_whisk_etcd_hosts": "10.0.0.1:2379,10.0.0.2:2379",
                                                      "CONFIG_whisk_etcd_lease_timeout": "5"})
    assert (config.etcd_hosts, config.etcd_lease_timeout, config.cluster_name) == (
        "10.0.0.1:2379,10.0.0.2:2379", 5, "whisk")
    with pytest.raises(ConfigError, match="--etcd-hosts"):
        load_config(["--etcd-hosts", "host:port"], env={})
