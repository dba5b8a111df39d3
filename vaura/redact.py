"""The one place that hides credentials before a value reaches any sink (MLflow params/tags/artifacts, logs,
``rejected.csv``).

Two kinds of secret are recognised: a *key* that names one (``password``, ``secret_access_key``, ``token``...)
masks its whole value, and a *value* that carries one inside a URL: ``user:password@`` user info and the
signature/credential/token query parameters of presigned S3, GCS and Azure SAS URLs. Credentials belong in
the environment (``AWS_*`` variables) or in a URL-list file outside ``params.yaml``; :func:`find_secret` lets a
stage refuse a params value that would otherwise be recorded verbatim by DVC in ``dvc.lock``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

MASK = "***"
# credential-like key names (a whole ``token`` component only: ``tokens_per_s`` is a metric, not a secret)
SECRET_KEY = re.compile(r"password|passwd|secret|credential|access[_-]?key|api[_-]?key|(^|[._-])token($|[._-])", re.I)
_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")
_SECRET_QUERY = re.compile(
    r"(?<=[?&;])((?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential)|signature|sig|"
    r"token|access_token|auth|password|secret|api[_-]?key)=)[^&;#\s]*",
    re.I,
)


def redact(value: Any) -> Any:
    """``value`` with URL user info removed and secret query parameters masked (non-strings are returned unchanged)."""
    if not isinstance(value, str):
        return value
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, _USERINFO.sub("", value))


def redact_tree(obj: Any) -> Any:
    """A nested mapping/list with credential-named keys masked and every string value redacted."""
    if isinstance(obj, Mapping):
        return {k: (MASK if SECRET_KEY.search(str(k)) else redact_tree(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return redact(obj)


def find_secret(obj: Any, where: str = "params") -> str | None:
    """The dotted key of the first value in ``obj`` that carries a credential, or None."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{where}.{k}"
            if SECRET_KEY.search(str(k)) and v not in (None, ""):
                return key
            found = find_secret(v, key)
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        return next((f for i, v in enumerate(obj) if (f := find_secret(v, f"{where}[{i}]"))), None)
    return where if isinstance(obj, str) and redact(obj) != obj else None
