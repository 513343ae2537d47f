"""Security checks: dependency audit, the admin token, input limits, notebook outputs.

- :func:`audit_dependencies`: ``pip-audit`` over the pinned ``requirements.txt`` (PyPI's
  advisory data); an unreachable advisory database is reported, not failed.
- :func:`token_compare_is_constant_time`: ``serving/admin.py`` compares the token with
  ``hmac.compare_digest`` and never with ``==``/``!=``.
- :func:`token_never_logged`: a live server with a token gets right and wrong tokens; no
  log line and no response (body or header) contains either.
- :func:`input_limits`: oversized bodies, sequences and ``top_k`` get a 4xx with a message.
- :func:`scan_notebook_outputs`: the repository's secret scan (``movierec.infra.validate``)
  over every output of a notebook, plus literal secrets the caller knows.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx

from movierec.infra.commands import repo_root
from movierec.infra.repo_scan import scan_text
from movierec.reliability.fuzz import serve

ADMIN_MODULE = Path("lib/movierec/serving/admin.py")


def audit_dependencies(requirements: Path | None = None, timeout: float = 300.0
                       ) -> dict[str, Any]:
    """``pip-audit -r requirements.txt --no-deps`` against PyPI's vulnerability data.

    Only the pinned top-level requirements are audited (``--no-deps --disable-pip``:
    resolving the full tree would install torch into a scratch venv).

    Returns:
        ``status`` ``clean``, ``vulnerable``, ``error`` (pip-audit failed: ``ok`` False) or
        ``unavailable`` (no advisory database reachable or pip-audit missing: ``ok`` is then
        None), the findings, and the command.
    """
    req = requirements or repo_root() / "requirements.txt"
    binary = Path(sys.executable).with_name("pip-audit")
    tool = str(binary) if binary.exists() else shutil.which("pip-audit")
    if tool is None:
        return {"status": "unavailable", "ok": None,
                "reason": "pip-audit is not installed (pip install pip-audit==2.10.1)"}
    pinned, substituted = _pinned_requirements(req)
    cmd = [tool, "-r", str(pinned), "--no-deps", "--disable-pip", "--vulnerability-service", "pypi",
           "--format", "json", "--progress-spinner", "off"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "unavailable", "ok": None, "command": " ".join(cmd),
                "reason": f"pip-audit did not finish within {timeout:g} s (advisory database "
                          "unreachable?)"}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        # pip-audit itself failed (a bad requirement line, a crash): that is a failed
        # audit, not an unreachable database, so it must not pass as "not checked".
        return {"status": "error", "ok": False, "command": " ".join(cmd),
                "exit_code": done.returncode,
                "reason": (done.stderr.strip() or done.stdout.strip())[-600:]}
    deps = report.get("dependencies", [])
    findings = [{"package": d["name"], "version": d.get("version"),
                 "vulnerabilities": [{"id": v.get("id"), "fix_versions": v.get("fix_versions"),
                                      "aliases": v.get("aliases")} for v in d.get("vulns", [])]}
                for d in deps if d.get("vulns")]
    skipped = [{"package": d["name"], "reason": d.get("skip_reason")} for d in deps
               if d.get("skip_reason")]
    if deps and len(skipped) == len(deps):
        return {"status": "unavailable", "ok": None, "command": " ".join(cmd),
                "reason": f"the advisory database (PyPI's JSON API) answered for none of the "
                          f"{len(deps)} packages: {skipped[0]['reason']}",
                "pinned_from_venv": substituted}
    return {"status": "vulnerable" if findings else "clean", "ok": not findings,
            "command": " ".join(cmd), "audited": len(deps) - len(skipped), "skipped": skipped,
            "pinned_from_venv": substituted, "findings": findings}


def _pinned_requirements(req: Path) -> tuple[Path, list[str]]:
    """A copy of ``req`` where a range (``a>=1,<2``) is pinned to the installed version.

    pip-audit's ``--no-deps`` refuses unpinned lines; the installed version is the one the
    range resolved to, so it is the one to audit.
    """
    lines, substituted = [], []
    for raw in req.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" in line:
            lines.append(line)
            continue
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]
        try:
            installed = version(name)
        except PackageNotFoundError:
            lines.append(line)
            continue
        lines.append(f"{name}=={installed}")
        substituted.append(f"{line} -> {name}=={installed}")
    out = Path(tempfile.mkdtemp(prefix="movierec-audit-")) / "requirements.txt"
    out.write_text("\n".join(lines) + "\n")
    return out, substituted


def token_compare_is_constant_time(admin: Path | None = None) -> dict[str, Any]:
    """Read ``serving/admin.py``: ``hmac.compare_digest`` is used, no ``==`` touches a token."""
    path = admin or repo_root() / ADMIN_MODULE
    tree = ast.parse(path.read_text())
    digest_calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and ast.unparse(node.func) in ("hmac.compare_digest", "compare_digest")]
    plain = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq))
                                                 for op in node.ops):
            text = ast.unparse(node)
            if "token" in text.lower() or "given" in text:
                plain.append(f"line {node.lineno}: {text}")
    return {"file": str(path.relative_to(repo_root())) if path.is_relative_to(repo_root())
            else str(path), "compare_digest_lines": digest_calls, "plain_comparisons": plain,
            "ok": bool(digest_calls) and not plain}


def token_never_logged(bundle: Path, home: Path) -> dict[str, Any]:
    """Start a server with a random token; right and wrong tokens never appear in any output.

    Sends the right token (a reload that succeeds), a wrong one, a malformed header and a
    token-shaped query string, then searches the server log, every response body and every
    response header for both tokens.
    """
    token = "tk-" + secrets.token_urlsafe(24)
    wrong = "tk-" + secrets.token_urlsafe(24)
    exchanges: list[dict[str, Any]] = []
    seen: list[str] = []
    with serve(bundle, home, admin_token=token, extra_args=("--threads", "1")) as service, \
            httpx.Client(base_url=service.url, timeout=60) as client:
        calls = [("POST", "/admin/reload", {"Authorization": f"Bearer {token}"},
                  {"wait": True}, 200),
                 ("GET", "/admin/reload", {"Authorization": f"Bearer {token}"}, None, 200),
                 ("POST", "/admin/reload", {"Authorization": f"Bearer {wrong}"}, {}, 403),
                 ("POST", "/admin/reload", {"Authorization": f"Basic {token}"}, {}, 401),
                 ("POST", f"/admin/reload?token={wrong}", {}, {}, 401),
                 ("GET", "/metrics", {}, None, 200), ("GET", "/version", {}, None, 200)]
        for method, path, headers, body, expected in calls:
            response = client.request(method, path, headers=headers, json=body)
            text = response.text + json.dumps(dict(response.headers))
            exchanges.append({"request": f"{method} {path.split('?')[0]}",
                              "status": response.status_code, "expected": expected})
            seen += [f"{method} {path.split('?')[0]} response" for s in (token, wrong)
                     if s in text]
        log = service.log_text()
    seen += [f"log line {n}" for n, line in enumerate(log.splitlines(), 1)
             if token in line or wrong in line]
    statuses_ok = all(e["status"] == e["expected"] for e in exchanges)
    return {"exchanges": exchanges, "log_lines": len(log.splitlines()), "token_seen_in": seen,
            "ok": statuses_ok and not seen and len(log.splitlines()) > 0}


def input_limits(bundle: Path, home: Path, max_sequence_length: int = 1000) -> dict[str, Any]:
    """Oversized body, sequence, ``top_k`` and feedback batch: each its own 4xx and a message.

    Each case expects one status: a body over the limit must be refused by the size check
    (413, also when it comes chunked, without a Content-Length), not by the schema's 422
    that an unknown field would get anyway.
    """
    big = json.dumps({"sequence": [1], "pad": "x" * 70_000}).encode()
    cases: dict[str, tuple[str, Any, int]] = {
        "body_over_64KiB": ("/recommend", {"sequence": [1], "pad": "x" * 70_000}, 413),
        "body_over_64KiB_chunked": ("/recommend", iter([big[:40_000], big[40_000:]]), 413),
        "sequence_too_long": ("/recommend", {"sequence": [1] * (max_sequence_length + 1)},
                              422),
        "top_k_zero": ("/recommend", {"sequence": [1], "top_k": 0}, 422),
        "top_k_over_100": ("/recommend", {"sequence": [1], "top_k": 101}, 422),
        "top_k_not_int": ("/predict", {"sequence": [1], "top_k": "10"}, 422),
        "feedback_over_1000_events": ("/feedback", {"events": [
            {"user_id": 1, "movie_id": 1, "event": "click", "timestamp": 1}] * 1001}, 422),
        "feedback_body_over_256KiB": ("/feedback", {"events": [], "pad": "x" * 300_000},
                                      413),
    }
    results: dict[str, Any] = {}
    with serve(bundle, home, extra_args=("--threads", "1")) as service, \
            httpx.Client(base_url=service.url, timeout=60) as client:
        for name, (path, body, expected) in cases.items():
            if isinstance(body, dict):
                response = client.post(path, json=body)
            else:  # a generator: sent chunked, with no Content-Length to check up front
                response = client.post(path, content=body,
                                       headers={"content-type": "application/json"})
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            message = str(payload.get("message") or payload.get("detail") or "")
            results[name] = {"route": path, "status": response.status_code,
                             "expected": expected, "message": message[:240],
                             "ok": response.status_code == expected and bool(message)}
        alive = client.get("/health").status_code == 200
    return {"cases": results, "alive_after": alive,
            "ok": alive and all(r["ok"] for r in results.values())}


def _output_texts(notebook: dict[str, Any]) -> Iterable[str]:
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            for key in ("text", "traceback"):
                value = output.get(key)
                if value:
                    yield "".join(value) if isinstance(value, list) else str(value)
            for mime, value in (output.get("data") or {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    yield "".join(value) if isinstance(value, list) else json.dumps(value)


def scan_notebook_outputs(notebook: Path, secrets_to_find: Iterable[str] = ()) -> list[str]:
    """Secrets in a notebook's outputs: the repository scan's patterns plus known values.

    Notebook tests call this on the copies papermill executed (they are not committed),
    e.g. ``assert not scan_notebook_outputs(out, [admin_token])``.

    Returns:
        ``"<notebook> output N line M: what"`` for each problem; empty when clean.
    """
    data = json.loads(notebook.read_text())
    known = [s for s in secrets_to_find if s]
    problems = []
    for number, text in enumerate(_output_texts(data), 1):
        problems += [f"{notebook.name} output {number} {p}" for p in scan_text(text)]
        problems += [f"{notebook.name} output {number}: contains a known secret"
                     for s in known if s in text]
    return problems


def scan_committed_notebooks(root: Path | None = None) -> dict[str, Any]:
    """:func:`scan_notebook_outputs` over every committed ``.ipynb`` in the repository."""
    base = root or repo_root()
    notebooks = sorted(p for p in base.rglob("*.ipynb")
                       if ".venv" not in p.parts and ".cache" not in p.parts
                       and ".ipynb_checkpoints" not in p.parts)
    problems = [p for nb in notebooks for p in scan_notebook_outputs(nb)]
    return {"notebooks": [str(p.relative_to(base)) for p in notebooks], "problems": problems,
            "ok": not problems}


__all__ = ["audit_dependencies", "input_limits", "scan_committed_notebooks",
           "scan_notebook_outputs", "token_compare_is_constant_time", "token_never_logged"]
