"""A small Kubernetes REST client for the Argo scenarios (tests/test_argo_controller.py).

The standard library is enough for the few verbs the control-plane fixture and the test
kubelet use (get, list, create, merge-patch, delete), so no Kubernetes client joins the test
dependencies. It speaks to the kube-apiserver on 127.0.0.1 with a bearer token, trusting only
the certificate that apiserver generated for itself.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ARGO = "/apis/argoproj.io/v1alpha1"


class ApiError(Exception):
    """A non-2xx answer: its status code and the apiserver's message."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status


class KubeAPI:
    """JSON requests to one apiserver as one (static-token) user."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        self.url = url
        self._token = token
        self._tls = ssl.create_default_context(cafile=str(ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self._tls, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, method, path, error.read().decode()) from None
        return json.loads(text) if text else None

    def healthy(self, check: str = "/readyz") -> bool:
        """True when the apiserver answers its health check with `ok` (plain text, not JSON)."""
        request = urllib.request.Request(self.url + check)
        request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, context=self._tls, timeout=5) as response:
                return response.read().strip() == b"ok"
        except urllib.error.HTTPError:
            return False

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def items(self, path: str) -> list[dict]:
        return self.get(path)["items"]

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict) -> dict:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, grace_seconds: int | None = None) -> None:
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        try:
            self.request("DELETE", path, body)
        except ApiError as error:
            if error.status != 404:
                raise


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something other than None (or False); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (OSError, ApiError):
            value = None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
