"""The distribution as a third party would ship it: entry point, hook, package data."""

from __future__ import annotations

from importlib.metadata import entry_points, version
from importlib.resources import files

from imagerouter_runapi import RunAPIProvider, register_providers

from imagerouter.plugins import Plugins
from imagerouter.provider import Provider


def test_the_entry_point_registers_the_provider() -> None:
    [ep] = [ep for ep in entry_points(group="imagerouter") if ep.name == "runapi"]
    assert ep.value == "imagerouter_runapi"
    assert ep.dist is not None and ep.dist.name == "imagerouter-runapi"
    plugins = Plugins.load()
    assert isinstance(plugins.providers()["runapi"], RunAPIProvider)
    assert not [e for e in plugins.errors if e.plugin == "runapi"]


def test_the_hook_registers_one_provider() -> None:
    registered: list[Provider] = []
    register_providers(register=registered.append)
    [provider] = registered
    assert provider.name == "runapi" and provider.title == "RunAPI"
    assert provider.key_env_var == "RUNAPI_API_KEY"
    assert provider.base_url_env_var == "RUNAPI_BASE_URL"
    assert provider.default_base_url == "https://runapi.ai"
    assert provider.idempotent_creates is True
    assert provider.can_find_by_task_id is False
    assert provider.version == version("imagerouter-runapi")


def test_the_yaml_files_ship_as_package_data() -> None:
    package = files("imagerouter_runapi")
    assert package.joinpath("prices.yaml").is_file()
    assert package.joinpath("capabilities.yaml").is_file()
    assert package.joinpath("py.typed").is_file()
