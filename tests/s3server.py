"""A real S3-compatible HTTP server for tests: moto's standalone server in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from tests.conftest import free_port


@dataclass
class S3Server:
    """A running ``moto_server`` on loopback; ``endpoint`` is its URL."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not answer on {self.endpoint}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def env(self) -> dict[str, str]:
        """Standard AWS variables that point boto3 and pyarrow at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def start_s3_server() -> S3Server:
    server = S3Server(port=free_port())
    server.start()
    os.environ.update(server.env())
    return server
