"""Issue 15 (and two items of issue 9): bounded inputs, nothing paid for that cannot be saved,
URL credentials kept out of records, and result images fetched only from the provider's hosts.

Every "refused before paying" test asserts the emulators saw no create at all."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from imagerouter import download as download_module
from imagerouter import outputs
from imagerouter.bounded import FileReadError, read_bounded
from imagerouter.config import load_config
from imagerouter.download import download_image
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorServer, render_image
from imagerouter.errors import (
    ConfigError,
    DownloadFailedError,
    InputImageError,
    RequestValidationError,
)
from imagerouter.inputs import load_input
from imagerouter.outputs import ensure_writable_dir
from imagerouter.plugins import Plugins
from imagerouter.redact import Redactor
from imagerouter.request import ImageInput, ImageRequest
from imagerouter.router import Router
from imagerouter.urls import HostPolicy, check_http_url, strip_credentials
from imagerouter.yamlsource import MAX_CONFIG_BYTES, MAX_DEPTH, parse_yaml

from .conftest import MakeRouter
from .test_gateway import ServeGateway, serve_gateway

__all__ = ["serve_gateway"]  # a fixture, used by name

NOTHING_CREATED = {"runapi": 0, "runflow": 0}


def _png(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, (10, 120, 200)).save(path)
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


# --- bounded reads ----------------------------------------------------------------------------

needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero: POSIX")


@needs_posix
def test_dev_zero_is_refused_without_reading_it() -> None:
    with pytest.raises(FileReadError) as info:
        read_bounded(Path("/dev/zero"), 1024)
    assert info.value.reason == "not_regular"
    assert "character device" in str(info.value)


@needs_posix
def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes; run it in a thread so a
    # regression fails this test instead of hanging the suite.
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_bounded(_fifo(tmp_path), 1024)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "read_bounded blocked on a FIFO"
    assert len(errors) == 1 and isinstance(errors[0], FileReadError)
    assert errors[0].reason == "not_regular" and "FIFO" in str(errors[0])


def test_read_is_capped_and_exact_cap_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    with pytest.raises(FileReadError) as info:
        read_bounded(path, 99)
    assert info.value.reason == "too_large" and info.value.size == 100
    with pytest.raises(FileReadError) as missing:
        read_bounded(tmp_path / "nope", 10)
    assert missing.value.reason == "missing"
    with pytest.raises(FileReadError) as folder:
        read_bounded(tmp_path, 10)
    assert folder.value.reason == "not_regular"


@needs_posix
def test_edit_input_from_dev_zero_or_a_fifo_is_an_input_error(tmp_path: Path) -> None:
    for source in (Path("/dev/zero"), _fifo(tmp_path)):
        with pytest.raises(InputImageError, match="not a file; give an image file") as info:
            load_input(ImageInput.coerce(source), max_bytes=50 * 2**20)
        assert info.value.source == str(source)


def test_oversized_input_names_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 2000)
    with pytest.raises(InputImageError, match=r"over the limit of 1\.0 KiB"):
        load_input(ImageInput.coerce(path), max_bytes=1024)


@needs_posix
def test_config_from_dev_zero_or_a_fifo_is_a_config_error(tmp_path: Path) -> None:
    for source in (Path("/dev/zero"), _fifo(tmp_path)):
        with pytest.raises(ConfigError) as info:
            load_config(source)
        assert str(info.value).startswith(f"{source}: the config path is ")
        assert "not a file" in str(info.value)


def test_config_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="over the limit of 256 KiB"):
        load_config(path)
    with pytest.raises(ConfigError, match="over the limit"):
        parse_yaml("#" * (MAX_CONFIG_BYTES + 1), "big.yaml")


def test_deep_yaml_is_a_config_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep"):
        load_config(path)


def test_depth_limit_is_exact_and_names_the_line() -> None:
    def nested(depth: int) -> str:  # `depth` collections, one key per line
        return "".join("  " * i + f"k{i}:\n" for i in range(depth - 1)) + "  " * depth + "v: 1\n"

    parse_yaml(nested(MAX_DEPTH), "ok.yaml")
    with pytest.raises(ConfigError) as info:
        parse_yaml(nested(MAX_DEPTH + 1), "deep.yaml")
    assert info.value.line == MAX_DEPTH + 1
    assert str(info.value).startswith(f"deep.yaml:{MAX_DEPTH + 1}: ")


# --- text fields must be UTF-8 ----------------------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "tier", "size"])
def test_lone_surrogates_are_a_validation_error(field: str) -> None:
    fields: dict[str, Any] = {"prompt": "a lighthouse", field: "bad\udcff"}
    with pytest.raises(RequestValidationError) as info:
        ImageRequest.build(**fields)
    assert info.value.field == field
    assert "not valid UTF-8" in str(info.value)


def test_surrogate_in_a_url_input_is_a_validation_error() -> None:
    with pytest.raises(RequestValidationError) as info:
        ImageRequest.build(prompt="p", images=["https://x.example/\ud800.png"],
                           allow_url_inputs=True)
    assert info.value.field == "images"


def test_surrogate_prompt_is_refused_before_any_paid_call(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    with pytest.raises(RequestValidationError, match="prompt: is not valid UTF-8"):
        router.generate("a lighthouse \udce9 at dusk")
    assert emulators.created() == NOTHING_CREATED


# --- never pay for what cannot be saved --------------------------------------------------------

@pytest.mark.parametrize("images", [[], None, ()])
def test_edit_without_images_is_refused(
    make_router: MakeRouter, emulators: Emulators, images: Any
) -> None:
    router = make_router()
    with pytest.raises(RequestValidationError) as info:
        router.edit("make it purple", images=images)
    assert info.value.field == "images"
    assert emulators.created() == NOTHING_CREATED


def test_mask_of_another_size_is_refused_before_paying(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    image = _png(tmp_path / "photo.png", (64, 48))
    mask = _png(tmp_path / "mask.png", (32, 32))
    router = make_router()
    with pytest.raises(InputImageError) as info:
        router.edit("purple sky", images=[image], mask=mask)
    assert info.value.source == str(mask)
    assert "32x32" in str(info.value) and "64x48" in str(info.value)
    assert emulators.created() == NOTHING_CREATED
    assert emulators.apps["runflow"].counters.uploads == 0


def test_mask_of_the_same_size_is_served(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    image = _png(tmp_path / "photo.png", (64, 48))
    mask = _png(tmp_path / "mask.png", (64, 48))
    result = make_router().edit("purple sky", images=[image], mask=mask)
    assert result.images and sum(emulators.created().values()) == 1


@needs_posix
@pytest.mark.parametrize("target", ["/dev/null", "/proc/self", "a-file/sub"])
def test_unwritable_output_dir_is_refused_before_paying(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path, target: str
) -> None:
    if target == "/proc/self" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    (tmp_path / "a-file").write_text("not a folder")
    output = Path(target) if target.startswith("/") else tmp_path / target
    router = make_router()
    with pytest.raises(RequestValidationError) as info:
        router.generate("a lighthouse", output_dir=output)
    assert info.value.field == "output_dir"
    assert str(output) in str(info.value)
    assert emulators.created() == NOTHING_CREATED
    assert router.ledger is not None
    with sqlite3.connect(router.ledger.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)


def test_output_dir_is_created_and_no_probe_is_left(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper"
    ensure_writable_dir(target)
    assert target.is_dir() and list(target.iterdir()) == []


def test_cli_unwritable_output_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from imagerouter.cli.main import cli

    result = CliRunner().invoke(
        cli, ["generate", "a lighthouse", "--emulate", "-o", "/dev/null"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "output_dir" in lines[0] and "/dev/null" in lines[0]
    assert "Traceback" not in result.output


# --- URL credentials ---------------------------------------------------------------------------

def test_strip_credentials() -> None:
    assert strip_credentials("http://bob:hunter2@img.example:8080/a.png?x=1#f") == (
        "http://img.example:8080/a.png?x=1#f"
    )
    assert strip_credentials("https://img.example/a.png") == "https://img.example/a.png"
    assert "hunter2" not in Redactor().redact("fetching http://bob:hunter2@img.example/a.png")


def test_url_input_name_has_no_credentials() -> None:
    request = ImageRequest.build(prompt="p", images=["http://bob:hunter2@img.example/a.png"],
                                 allow_url_inputs=True)
    assert request.images[0].url == "http://bob:hunter2@img.example/a.png"  # for the provider
    assert "hunter2" not in str(request.public_dict())
    assert "hunter2" not in request.images[0].name


def test_url_credentials_never_reach_the_ledger(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    url = "https://bob:hunter2secret@img.example/photo.png"
    router.edit("purple", images=[url], allow_url_inputs=True, providers="runapi")
    assert emulators.created()["runapi"] == 1
    router.close()
    assert router.ledger is not None
    ledger = Path(router.ledger.path)
    blobs = [p.read_bytes() for p in ledger.parent.glob(ledger.name + "*")]
    assert any(b"img.example/photo.png" in blob for blob in blobs)  # the URL is recorded
    assert not any(b"hunter2secret" in blob for blob in blobs)


# --- base URLs ---------------------------------------------------------------------------------

def test_file_base_url_is_a_config_error_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  runapi:\n    base_url: file:///etc/passwd\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3 and info.value.key == "providers.runapi.base_url"
    assert "http(s)" in str(info.value)


def test_check_http_url() -> None:
    assert check_http_url("https://api.example.com/v1") is None
    assert check_http_url("http://127.0.0.1:8080") is None
    for bad in ("file:///x", "ftp://h/", "https://", "https://u:p@h/", "https://h/?q=1", "h/x"):
        assert check_http_url(bad) is not None, bad


def test_base_url_from_the_environment_is_checked(
    plugins: Plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNAPI_BASE_URL", "file:///etc")
    config = load_config({}, known_providers=plugins.providers())
    provider = plugins.providers()["runapi"]
    with pytest.raises(ConfigError, match="RUNAPI_BASE_URL must be an http"):
        config.provider_settings("runapi").resolve_base_url(provider)


# --- download hosts ----------------------------------------------------------------------------

def test_host_policy() -> None:
    policy = HostPolicy.build(["*.runapi.ai"], "https://runapi.ai", ["cdn.example.com"])
    assert not policy.allow_loopback
    for ok in ("https://file.runapi.ai/a.png", "https://runapi.ai/x", "https://cdn.example.com/y"):
        assert policy.refusal(ok) is None, ok
    for bad in ("https://evil.example/a", "https://runapi.ai.evil.example/a",
                "http://169.254.169.254/latest", "http://127.0.0.1/x", "http://localhost/x",
                "http://10.0.0.7/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x"):
        assert policy.refusal(bad) is not None, bad
    emulator = HostPolicy.build([], "http://127.0.0.1:5555")
    assert emulator.allow_loopback
    assert emulator.refusal("http://127.0.0.1:5555/f.png") is None
    assert emulator.refusal("http://10.0.0.7/x") is not None


def test_router_download_policy(plugins: Plugins, make_router: MakeRouter) -> None:
    config = load_config({"downloads": {"allowed_hosts": ["*.cdn.example"]}},
                         known_providers=plugins.providers())
    real = Router(config, plugins=plugins, ledger=False)
    try:
        runflow = real.download_policy("runflow")
        assert not runflow.allow_loopback
        assert {"*.amazonaws.com", "api.runflow.io", "*.cdn.example"} <= set(runflow.hosts)
        assert runflow.refusal("https://bucket.s3.us-east-1.amazonaws.com/o.png") is None
        assert real.download_policy("runapi").refusal("https://file.runapi.ai/o.png") is None
    finally:
        real.close()
    assert make_router().download_policy("runapi").allow_loopback  # the emulator


def test_allowed_hosts_must_be_host_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("downloads:\n  allowed_hosts:\n    - https://cdn.example.com/x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.line, info.value.key) == (2, "downloads.allowed_hosts")
    assert "is not a host name" in str(info.value)
    config = load_config({"downloads": {"allowed_hosts": [" CDN.Example.com. ", "*.img.example"]}})
    assert config.downloads.allowed_hosts == ["cdn.example.com", "*.img.example"]


HITS: list[str] = []


async def _served(request: Request) -> Response:
    HITS.append(request.url.path)
    return Response(render_image("h", 24, 16, "png"), media_type="image/png")


async def _redirect(request: Request) -> Response:
    HITS.append(request.url.path)
    return RedirectResponse(request.query_params["to"], status_code=302)


APP = Starlette(routes=[Route("/img.png", _served), Route("/go", _redirect)])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with EmulatorServer(APP) as running:
        yield running.url.rstrip("/")


async def _download(url: str, dest: Path, hosts: HostPolicy | None) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        return await download_image(http, url, dest, "img", provider="p", hosts=hosts)


async def test_download_from_a_host_not_allowed_is_never_fetched(
    server: str, tmp_path: Path
) -> None:
    HITS.clear()
    public_only = HostPolicy(hosts=("127.0.0.1", "cdn.example.com"))  # loopback: refused anyway
    with pytest.raises(DownloadFailedError) as info:
        await _download(f"{server}/img.png", tmp_path, public_only)
    assert info.value.code == "host_not_allowed" and info.value.accepted == "yes"
    assert "private, loopback or link-local" in str(info.value)
    assert HITS == [] and os.listdir(tmp_path) == []


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data",
                                    "https://elsewhere.example/x.png"])
async def test_redirect_to_a_host_not_allowed_is_refused(
    server: str, tmp_path: Path, target: str
) -> None:
    HITS.clear()
    emulator = HostPolicy.build([], server)
    with pytest.raises(DownloadFailedError) as info:
        await _download(f"{server}/go?to={target}", tmp_path, emulator)
    assert info.value.code == "host_not_allowed"
    assert HITS == ["/go"]


async def test_download_message_has_no_url_credentials(server: str, tmp_path: Path) -> None:
    url = server.replace("http://", "http://bob:hunter2@") + "/missing.png"
    with pytest.raises(DownloadFailedError) as info:
        await _download(url, tmp_path, HostPolicy.build([], server))
    assert "hunter2" not in str(info.value) and "hunter2" not in (info.value.url or "")


# --- file modes follow the umask (issue 9) -----------------------------------------------------

@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
async def test_saved_image_mode_follows_the_umask(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int, mode: int
) -> None:
    monkeypatch.setattr(outputs, "_UMASK", umask)
    saved = await _download(f"{server}/img.png", tmp_path, HostPolicy.build([], server))
    assert stat.S_IMODE(saved.path.stat().st_mode) == mode


def test_umask_is_read_without_changing_it() -> None:
    before = os.umask(0o027)
    try:
        assert outputs._read_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was
    finally:
        os.umask(before)
    assert download_module.file_mode is outputs.file_mode


# --- tier sizes the models cannot make (issue 9) -----------------------------------------------

@pytest.mark.parametrize("provider", ["runflow", "runapi"])
def test_tier_size_no_model_can_make_is_a_load_error(
    tmp_path: Path, plugins: Plugins, provider: str
) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_text(
        "tiers:\n"
        "  tall:\n"
        f"    - provider: {provider}\n"
        "      model: gpt-image-2\n"
        "      size: 16x9000\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, known_providers=plugins.providers())
    assert str(info.value).startswith(f"{path}:5: tiers.tall[0].size: {provider} cannot make")


def test_tier_sizes_that_can_be_made_pass(tmp_path: Path, plugins: Plugins) -> None:
    config = load_config(
        {"tiers": {"wide": [
            {"provider": "runflow", "model": "gpt-image-2", "size": "1536x1024"},
            {"provider": "runapi", "model": "gpt-image-2", "aspect_ratio": "16:9",
             "resolution": "2k"},
            {"provider": "runflow", "model": "gpt-image-1.5", "size": "1024x1536"},
        ]}},
        known_providers=plugins.providers(),
    )
    assert len(config.tiers["wide"]) == 3


# --- the gateway goes through the same checks --------------------------------------------------

def test_gateway_unwritable_output_dir_is_refused_before_paying(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway({"gateway": {"output_dir": "/dev/null"}})
    response = served.http().post(
        "/v1/images/generations", json={"model": "gpt-image-2", "prompt": "a lighthouse"}
    )
    assert response.status_code >= 400, response.text
    assert "output_dir" in response.text
    assert emulators.created() == NOTHING_CREATED


def test_gateway_lone_surrogate_prompt_is_a_400(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    body = b'{"model": "gpt-image-2", "prompt": "a \\ud800 lighthouse"}'
    response = served.http().post(
        "/v1/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert emulators.created() == NOTHING_CREATED


def test_a_local_file_name_that_is_not_utf8_is_still_usable(tmp_path: Path) -> None:
    name = os.fsdecode(b"photo-\xff.png")  # a surrogate: legal on POSIX filesystems
    path = _png(tmp_path / name, (8, 8))
    request = ImageRequest.build(prompt="p", images=[str(path)])
    assert request.images[0].path == path


def test_the_router_applies_the_download_policy(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The emulator's result URLs are on loopback; a policy without the emulator allowance
    # (what a real provider gets) must refuse them, proving the router passes its policy on.
    router = make_router()
    monkeypatch.setattr(router, "download_policy", lambda name: HostPolicy(hosts=()))
    with pytest.raises(DownloadFailedError) as info:
        router.generate("a lighthouse", providers="runapi")
    assert info.value.code == "host_not_allowed"
    assert "refused to fetch it: 127.0.0.1 is a private" in str(info.value)
    assert emulators.created()["runapi"] == 1
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


async def test_an_allowed_name_that_resolves_to_a_private_address_is_refused() -> None:
    answers = {"ec2-10-0-0-9.compute-1.amazonaws.com": ["10.0.0.9"],
               "bucket.s3.amazonaws.com": ["52.216.0.1", "2600:1f18::1"],
               "gone.amazonaws.com": OSError("no such host")}
    asked: list[str] = []

    async def resolve(host: str) -> list[str]:
        asked.append(host)
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return answer

    policy = HostPolicy(hosts=("*.amazonaws.com",), resolve=resolve)
    refusal = await policy.refusal_after_lookup("https://ec2-10-0-0-9.compute-1.amazonaws.com/x")
    assert refusal is not None and "resolves to 10.0.0.9" in refusal
    assert await policy.refusal_after_lookup("https://bucket.s3.amazonaws.com/o.png") is None
    # A failed lookup is left to the download itself (a retryable network error).
    assert await policy.refusal_after_lookup("https://gone.amazonaws.com/o.png") is None
    # Hosts off the list and IP literals are judged without any lookup.
    assert await policy.refusal_after_lookup("https://evil.example/x") is not None
    assert await policy.refusal_after_lookup("http://10.1.2.3/x") is not None
    assert asked == ["ec2-10-0-0-9.compute-1.amazonaws.com", "bucket.s3.amazonaws.com",
                     "gone.amazonaws.com"]
