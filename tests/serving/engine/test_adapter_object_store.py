"""An adapter in the object store: copied onto the engine node by Ray Serve LLM's own S3
downloader (boto3), over the S3 protocol, from an S3 server in this process (moto's; the
facility's object store is not reachable from CI), then handed to the engine from there."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loadtests.front_doors import free_port
from serving.engine.lora_adapters import load_adapters
from tests.serving.engine.test_lora_adapters import RecordingEngine

FILES = {"adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}).encode(),
         "adapter_model.safetensors": bytes(range(256)) * 64}


@pytest.fixture()
def bucket(monkeypatch, tmp_path):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=(port := free_port()), verbose=False)
    server.start()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "fabriek",
                        "AWS_SECRET_ACCESS_KEY": "fabriek", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path / "home"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ministry", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for name, data in FILES.items():
        s3.put_object(Bucket="ministry", Key=f"adapters/permits/{name}", Body=data)
    yield tmp_path / "home"
    server.stop()


def test_an_object_store_adapter_is_copied_under_fabriek_home_and_loaded(bucket):
    engine = RecordingEngine()
    loaded = asyncio.run(load_adapters(engine, {"gov-ministry-permits": "s3://ministry/adapters/permits",
                                                "gov-ministry-absent": "s3://ministry/adapters/absent"}))
    assert loaded == ["gov-ministry-permits"]  # the absent one is logged and left out
    local = Path(engine.loaded["gov-ministry-permits"])
    assert local.is_relative_to(bucket / "adapters")
    assert {name: (local / name).read_bytes() for name in FILES} == FILES
