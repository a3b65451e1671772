"""``t2iroute mcp``: the official MCP SDK's client against the command in a real subprocess, over
stdio and over streamable HTTP on 127.0.0.1; plus the tools' errors in process."""

import asyncio
import base64
import io
import os
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters

from t2iroute import Router
from t2iroute.serving.mcp import build_mcp_server
from tests.test_serve import _free_port

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


async def _exercise(client) -> dict:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"generate_image", "route", "list_backends"}
    assert set(tools["generate_image"].input_schema["properties"]) == {"prompt", "policy", "seed"}
    assert "budget=X" in tools["route"].input_schema["properties"]["policy"]["description"]
    listed = (await client.call_tool("list_backends", {})).structured_content
    gen = await client.call_tool("generate_image", {"prompt": "a red circle", "seed": 3, "policy": "lam=0.5"})
    routed = await client.call_tool("route", {"prompts": ["a red circle", "two blue squares"], "policy": "budget=0.4"})
    bad = await client.call_tool("generate_image", {"prompt": "a red circle", "policy": "lam=oops"})
    return {"listed": listed, "gen": gen, "routed": routed, "bad": bad}


def _check(out: dict) -> None:
    from PIL import Image

    assert [b["name"] for b in out["listed"]["backends"]] == ["fast", "mid", "slow"]
    assert out["listed"]["metric"] == "clip"
    gen = out["gen"]
    assert not gen.is_error
    image = next(c for c in gen.content if c.type == "image")
    assert image.mime_type == "image/png"
    img = Image.open(io.BytesIO(base64.b64decode(image.data)))
    assert img.size == (64, 64)
    info = gen.structured_content
    assert info["seed"] == 3 and info["backend"] in ("fast", "mid", "slow") and info["id"].startswith("img-")
    assert info["decision"]["backend"] == info["backend"] and info["decision"]["lambda"] == 0.5
    routed = out["routed"].structured_content["decisions"]
    assert [d["prompt"] for d in routed] == ["a red circle", "two blue squares"]
    assert out["bad"].is_error and "policy" in out["bad"].content[0].text and "lam=oops" in out["bad"].content[0].text


def test_the_sdk_client_over_stdio_gets_a_real_image(tiny_artifact):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "t2iroute", "mcp", f"artifact={tiny_artifact}"], env=ENV
    )

    async def main():
        async with Client(params, read_timeout_seconds=120) as client:
            return await _exercise(client)

    _check(asyncio.run(main()))


def test_the_sdk_client_over_streamable_http_gets_a_real_image(tiny_artifact, tmp_path):
    port = _free_port()
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "t2iroute", "mcp", f"artifact={tiny_artifact}", "transport=http", f"port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=ENV,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)

        async def main():
            async with Client(url, read_timeout_seconds=120) as client:
                return await _exercise(client)

        _check(asyncio.run(main()))
    finally:
        proc.terminate()
        proc.wait(30)
        err.close()


def test_tool_errors_name_the_argument(tiny_artifact):
    server = build_mcp_server(Router.load(tiny_artifact), max_route_prompts=2)

    async def main():
        async with Client(server) as c:
            return [
                await c.call_tool("generate_image", {"prompt": ""}),
                await c.call_tool("generate_image", {"prompt": "a cat", "seed": -1}),
                await c.call_tool("route", {"prompts": ["a", "b", "c"]}),
                await c.call_tool("route", {"prompts": ["a"], "policy": "lam=-1"}),
                await c.call_tool("route", {"prompts": ["a"], "policy": "speed=fast"}),
            ]

    texts = [r.content[0].text for r in asyncio.run(main())]
    for text, word in zip(texts, ["prompt", "seed", "prompts", "lam", "speed=fast"]):
        assert word in text, text


def test_mcp_refuses_a_bad_command_line_in_one_line(tiny_artifact, capsys):
    from t2iroute.cli import main

    for args, word in [([], "artifact"), ([f"artifact={tiny_artifact}", "transport=pipe"], "transport")]:
        rc = main(["mcp", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and word in err, err
