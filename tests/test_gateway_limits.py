"""Size caps and bad uploads: every one a 400 in OpenAI's shape, never a 500, and never a
paid call."""

from __future__ import annotations

import openai
import pytest

from imagerouter.emulated import Emulators

from .test_gateway import ServeGateway, png_bytes, serve_gateway

__all__ = ["serve_gateway"]


def test_a_body_over_the_cap_is_a_400(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = serve_gateway({"gateway": {"max_body_bytes": 2000}})
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(prompt="a fox " * 500)
    assert caught.value.code == "request_too_large"
    with served.http() as http:
        chunked = http.post(  # no Content-Length: counted while reading
            "/v1/images/generations",
            content=iter([b'{"prompt": "', b"a" * 3000, b'"}']),
            headers={"content-type": "application/json"},
        )
    assert chunked.status_code == 400
    assert chunked.json()["error"]["code"] == "request_too_large"
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_an_upload_over_the_cap_is_a_400(serve_gateway: ServeGateway) -> None:
    big = png_bytes((256, 256))
    served = serve_gateway({"gateway": {"max_upload_bytes": len(big) - 1}})
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.edit(image=("big.png", big, "image/png"), prompt="x")
    assert (caught.value.param, caught.value.code) == ("image", "file_too_large")
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.edit(image=("ok.png", png_bytes(), "image/png"),
                                    mask=("mask.png", big, "image/png"), prompt="x")
    assert (caught.value.param, caught.value.code) == ("mask", "file_too_large")


@pytest.mark.parametrize(
    ("files", "data", "param", "code"),
    [
        ([("image", ("notes.txt", b"hello, not an image", "text/plain"))], {"prompt": "x"},
         "image", "invalid_image"),
        ([("image", ("empty.png", b"", "image/png"))], {"prompt": "x"}, "image", "invalid_image"),
        ([("mask", ("m.png", png_bytes(), "image/png"))], {"prompt": "x"}, "image",
         "missing_required_parameter"),
        ([("image", ("a.png", png_bytes(), "image/png"))], {}, "prompt",
         "missing_required_parameter"),
        ([("image", ("a.png", png_bytes(), "image/png"))], {"prompt": "x", "n": "0"}, "n",
         "invalid_value"),
        ([("image", ("a.png", png_bytes(), "image/png"))], {"prompt": "x", "style": "vivid2",
         "colour": "red"}, "colour", "unknown_parameter"),
        ([("image", ("a.png", png_bytes(), "image/png")),
          ("prompt", ("p.txt", b"x", "text/plain"))], {}, "prompt", "invalid_value"),
    ],
)
def test_bad_edit_forms_are_400s(
    serve_gateway: ServeGateway,
    emulators: Emulators,
    files: list[tuple[str, tuple[str, bytes, str]]],
    data: dict[str, str],
    param: str,
    code: str,
) -> None:
    served = serve_gateway()
    with served.http() as http:
        response = http.post("/v1/images/edits", files=files, data=data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_too_many_input_images(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    files = [("image[]", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(18)]
    with served.http() as http:
        response = http.post("/v1/images/edits", files=files, data={"prompt": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_multipart"


def test_edits_need_multipart(serve_gateway: ServeGateway) -> None:
    with serve_gateway().http() as http:
        response = http.post("/v1/images/edits", json={"prompt": "x", "image": "a.png"})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "invalid_content_type"


def test_a_garbled_multipart_body_is_a_400(serve_gateway: ServeGateway) -> None:
    with serve_gateway().http() as http:
        response = http.post(
            "/v1/images/edits",
            content=b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a",
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
    assert response.status_code == 400
