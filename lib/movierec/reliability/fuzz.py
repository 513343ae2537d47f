"""Fuzzing: the HTTP API against its own OpenAPI schema, and bad MovieLens files.

- :func:`fuzz_api` drives schemathesis over every operation of a live service's
  ``/openapi.json`` (schema-valid and schema-invalid requests) and runs schemathesis's
  checks on each answer: no 5xx, every body and status as the schema says, valid data
  accepted, invalid data refused.
- :func:`fuzz_data` writes broken ml-100k folders (truncated lines, wrong separators, wrong
  encodings, huge fields, empty files, binary garbage) and runs ``movierec data prepare`` on
  each as a subprocess: a clear one-line error naming the file and line (exit 2), never a
  traceback; with ``--lenient`` it reports counts and keeps every good row.
- :func:`serve` starts ``movierec serve`` on a free port (shared with the soak and the
  security checks).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from movierec.serving.loadtest import free_port, wait_ready

MAX_SAMPLES = 5  # failure messages kept per (operation, check)


# ---------------------------------------------------------------------------------------
# A live service
# ---------------------------------------------------------------------------------------

@dataclass
class LiveService:
    """A ``movierec serve`` subprocess: its URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    name: str = "service"  # bench/serve.py's run_wrk scrapes /metrics of "service*" servers

    def log_text(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(bundle: Path, home: Path, *, admin_token: str | None = None,
          extra_args: tuple[str, ...] = (), ready_timeout: float = 120.0,
          ) -> Iterator[LiveService]:
    """Run ``movierec serve --bundle BUNDLE`` on a free port until the block ends.

    Args:
        bundle: A verified bundle folder.
        home: ``MOVIEREC_HOME`` of the server (its feedback store lives there).
        admin_token: ``MOVIEREC_ADMIN_TOKEN`` for the server (None: admin API off).
        extra_args: More ``movierec serve`` options (e.g. ``("--threads", "1")``).
        ready_timeout: Seconds to wait for ``/ready``.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MOVIEREC_ADMIN_TOKEN"}
    env["MOVIEREC_HOME"] = str(home)
    if admin_token is not None:
        env["MOVIEREC_ADMIN_TOKEN"] = admin_token
    port = free_port()
    log = home / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "movierec.cli.main", "serve", "--bundle", str(bundle),
           "--port", str(port), *extra_args]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    service = LiveService(f"http://127.0.0.1:{port}", proc, log)
    try:
        try:
            wait_ready(service.url, timeout=ready_timeout, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log tail:\n{service.log_text()[-2000:]}") from exc
        yield service
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------------
# API fuzzing with schemathesis
# ---------------------------------------------------------------------------------------

def _checker(base_url: str, headers: dict[str, str] | None, label: str, counts: Counter[str],
             statuses: Counter[str], failures: Counter[str], samples: dict[str, list[str]],
             ) -> Callable[[Any], None]:
    """The hypothesis test body of one operation: call, then count statuses and failures."""

    def check_one(case: Any) -> None:  # no defaults: hypothesis's @given refuses them
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        status = str(response.status_code)
        statuses[status] += 1
        counts[status] += 1
        try:
            case.validate_response(response, headers=headers)
        except BaseExceptionGroup as group:  # schemathesis's FailureGroup
            for failure in group.exceptions:
                key = f"{label} {type(failure).__name__}"
                failures[key] += 1
                kept = samples.setdefault(key, [])
                if len(kept) < MAX_SAMPLES:
                    body = case.body if not isinstance(case.body, bytes) else "<bytes>"
                    kept.append(f"{status}: {str(failure).strip()[:300]} "
                                f"(body {str(body)[:200]})")

    return check_one


def fuzz_api(base_url: str, examples_per_operation: int,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Schemathesis over every operation of ``base_url``'s OpenAPI schema.

    Each operation gets ``examples_per_operation`` schema-valid cases and as many
    schema-invalid ones (operations without inputs have a single valid case). Every answer
    goes through schemathesis's default checks; failures are counted, not raised, so one
    bad route does not hide the others. Hypothesis is derandomized: runs are repeatable.

    Args:
        base_url: The live service.
        examples_per_operation: Hypothesis examples per operation and generation mode.
        headers: Sent with every request (e.g. a wrong admin token).

    Returns:
        JSON-ready counts: requests, by status, by operation, failures by check with
        samples, ``server_errors`` (5xx), ``schema_violations`` and ``ok``.
    """
    import hypothesis  # noqa: PLC0415 - heavy imports, only for a fuzz run
    import schemathesis  # noqa: PLC0415
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415
    from schemathesis import GenerationMode  # noqa: PLC0415

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[str] = Counter()
    per_operation: dict[str, Counter[str]] = {}
    failures: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    generation_errors: list[str] = []
    started = time.perf_counter()
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        counts = per_operation.setdefault(label, Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check_one = _checker(base_url, headers, label, counts, statuses, failures, samples)
            run = given(case=operation.as_strategy(generation_mode=mode))(check_one)
            run = settings(max_examples=examples_per_operation, database=None, deadline=None,
                           derandomize=True, phases=[hypothesis.Phase.generate],
                           suppress_health_check=list(HealthCheck))(run)
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # No invalid request exists for an operation without inputs (GET /health).
                continue
            except Exception as exc:
                generation_errors.append(f"{label} {mode.value}: {type(exc).__name__}: "
                                         f"{str(exc)[:300]}")
    requests = sum(statuses.values())
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5"))
    schema_violations = sum(n for k, n in failures.items()
                            if k.rsplit(" ", 1)[1] in {"JsonSchemaError", "MalformedJson",
                                                      "UndefinedStatusCode",
                                                      "UndefinedContentType",
                                                      "MissingContentType",
                                                      "MalformedMediaType"})
    return {
        "tool": f"schemathesis {schemathesis.__version__}",
        "operations": sorted(per_operation),
        "examples_per_operation_and_mode": examples_per_operation,
        "requests": requests,
        "seconds": round(time.perf_counter() - started, 1),
        "by_status": dict(sorted(statuses.items())),
        "by_operation": {k: dict(sorted(v.items())) for k, v in sorted(per_operation.items())},
        "server_errors": server_errors,
        "schema_violations": schema_violations,
        "check_failures": dict(sorted(failures.items())),
        "failure_samples": samples,
        "generation_errors": generation_errors,
        "ok": server_errors == 0 and not failures and not generation_errors,
    }


# ---------------------------------------------------------------------------------------
# Bad data through `movierec data prepare`
# ---------------------------------------------------------------------------------------

N_ITEMS, N_USERS, PER_USER = 12, 6, 8
GOOD_LINE_COUNT = N_USERS * PER_USER


def _good_lines() -> list[str]:
    """Valid u.data lines: every user rates PER_USER distinct items at distinct times."""
    lines = []
    for user in range(1, N_USERS + 1):
        for k in range(PER_USER):
            item = (user + 3 * k) % N_ITEMS + 1
            lines.append(f"{user}\t{item}\t{1 + (user + k) % 5}\t{880000000 + 100 * user + k}")
    return lines


def _write_ml100k(folder: Path, data: bytes, item: bytes | None = None) -> Path:
    """An ml-100k folder: ``u.data`` as given, a valid ``u.item`` (unless given) and ``u.user``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_bytes(data)
    if item is None:
        flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
        item = "".join(f"{i}|Movie {i} (199{i % 10})|01-Jan-1995||http://x|{flags}\n"
                       for i in range(1, N_ITEMS + 1)).encode("latin-1")
    (folder / "u.item").write_bytes(item)
    (folder / "u.user").write_bytes("".join(f"{u}|30|M|other|0000{u}\n"
                                            for u in range(1, N_USERS + 1)).encode())
    return folder


@dataclass(frozen=True)
class BadFile:
    """One fuzzed folder and what ``prepare`` must say about it.

    Attributes:
        name: Case name in the report.
        file: The file the error must name.
        line: The line the error must name (None: the file as a whole is bad).
        write: Writes the folder.
        good_rows: Rows ``--lenient`` must keep (None: lenient must fail too, clearly).
    """

    name: str
    file: str
    line: int | None
    write: Callable[[Path], Path]
    good_rows: int | None


def _with_bad_line(bad: bytes, at: int) -> bytes:
    lines = [ln.encode() for ln in _good_lines()]
    lines.insert(at - 1, bad)
    return b"\n".join(lines) + b"\n"


def bad_files(seed: int = 0) -> list[BadFile]:
    """The fuzzed cases: one bad line among good ones, and files bad as a whole."""
    rng = random.Random(seed)
    good = GOOD_LINE_COUNT
    garbage = bytes(rng.randrange(256) for _ in range(64)).replace(b"\n", b"\x00")
    whole_garbage = bytes(rng.randrange(256) for _ in range(4096))
    one_line: dict[str, bytes] = {
        "truncated_line": b"3\t5\t4",
        "truncated_mid_field": b"3\t",
        "wrong_separator_line": b"3,5,4,881250949",
        "extra_field": b"3\t5\t4\t881250949\t7",
        "latin1_byte_in_field": b"3\t5\t4\t88125\xe90949",
        "huge_field": b"3\t" + b"9" * 1_000_000 + b"\t4\t881250949",
        "huge_text_field": b"3\t5\t" + b"x" * 2_000_000 + b"\t881250949",
        "binary_garbage_line": garbage,
        "nul_bytes": b"3\t5\x00\t4\t881250949",
        "float_ids": b"3.5\t5\t4\t881250949",
    }
    cases = [BadFile(name, "u.data", 7, (lambda folder, bad=bad: _write_ml100k(
        folder, _with_bad_line(bad, 7))), good) for name, bad in one_line.items()]
    text = "\n".join(_good_lines()) + "\n"
    cases += [
        BadFile("last_line_cut", "u.data", good + 1, lambda folder: _write_ml100k(
            folder, (text + "6\t2\t").encode()), good),
        BadFile("empty_file", "u.data", None, lambda folder: _write_ml100k(folder, b""), None),
        BadFile("blank_lines_only", "u.data", None,
                lambda folder: _write_ml100k(folder, b"\n\n  \n"), None),
        BadFile("wrong_separator_everywhere", "u.data", 1, lambda folder: _write_ml100k(
            folder, text.replace("\t", ",").encode()), None),
        BadFile("utf16_file", "u.data", 1, lambda folder: _write_ml100k(
            folder, text.encode("utf-16")), None),
        BadFile("binary_garbage_file", "u.data", 1,
                lambda folder: _write_ml100k(folder, whole_garbage), None),
        BadFile("bad_item_id_in_metadata", "u.item", 3, lambda folder: _write_ml100k(
            folder, text.encode(), _items_with_bad_line(3)), None),
        BadFile("empty_metadata", "u.item", None, lambda folder: _write_ml100k(
            folder, text.encode(), b""), None),
    ]
    return cases


def _items_with_bad_line(at: int) -> bytes:
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    lines = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}" for i in range(1, N_ITEMS + 1)]
    lines[at - 1] = f"x{at}|Broken (1995)|01-Jan-1995||http://x|{flags}"
    return ("\n".join(lines) + "\n").encode("latin-1")


def _prepare(source: Path, out: Path, home: Path,
             lenient: bool) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "movierec.cli.main", "data", "prepare", "--dataset",
           "ml-100k", "--source", str(source), "--out", str(out), "--json"]
    if lenient:
        cmd.append("--lenient")
    env = {**os.environ, "MOVIEREC_HOME": str(home)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          timeout=120)


def _judge_strict(case: BadFile, result: subprocess.CompletedProcess[str]) -> list[str]:
    problems = []
    err = result.stderr.strip()
    if result.returncode != 2:
        problems.append(f"exit {result.returncode}, expected 2")
    if "Traceback" in result.stderr:
        problems.append("traceback on stderr")
    if len(err.splitlines()) != 1:
        problems.append(f"{len(err.splitlines())} stderr lines, expected 1")
    if case.file not in err:
        problems.append(f"error does not name {case.file}")
    if case.line is not None and f"line {case.line}" not in err:
        problems.append(f"error does not name line {case.line}")
    return problems


def _judge_lenient(case: BadFile, result: subprocess.CompletedProcess[str]) -> list[str]:
    if case.good_rows is None:  # nothing usable: lenient must refuse as clearly as strict
        return _judge_strict(BadFile(case.name, case.file, None, case.write, None), result)
    if result.returncode != 0 or "Traceback" in result.stderr:
        return [f"exit {result.returncode}: {result.stderr.strip()[-300:]}"]
    card = json.loads(result.stdout[result.stdout.index("{"):])
    problems = []
    validation = card["validation"]
    if card["interactions"] != case.good_rows:
        problems.append(f"kept {card['interactions']} rows, expected all {case.good_rows} "
                        "good rows")
    if validation["rows_dropped"] != 1:
        problems.append(f"reported {validation['rows_dropped']} dropped rows, expected 1")
    if not any(rule["count"] for rule in validation["rules"].values()):
        problems.append("no rule reports the dropped row")
    return problems


def _run_case(case: BadFile, root: Path) -> dict[str, Any]:
    source = case.write(root / case.name / "ml-100k")
    home = root / case.name / "home"
    strict = _prepare(source, root / case.name / "strict", home, False)
    lenient = _prepare(source, root / case.name / "lenient", home, True)
    problems = _judge_strict(case, strict) + [
        f"--lenient: {p}" for p in _judge_lenient(case, lenient)]
    return {"file": case.file, "line": case.line, "strict_exit": strict.returncode,
            "strict_error": strict.stderr.strip()[-400:], "lenient_exit": lenient.returncode,
            "lenient_error": lenient.stderr.strip()[-400:] if lenient.returncode else "",
            "problems": problems}


def fuzz_data(workdir: Path | None = None, seed: int = 0, workers: int = 2) -> dict[str, Any]:
    """Run ``movierec data prepare`` (strict, then ``--lenient``) on every bad folder.

    Args:
        workdir: Where the temporary folders go (default: the system's temp folder).
        seed: Seed of the random garbage.
        workers: Cases run at once (each is two short subprocesses).

    Returns:
        Per case: the stderr line, exit codes, the problems found (empty when the CLI
        behaved), and ``ok`` overall.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="movierec-badfuzz-",
                                     dir=str(workdir) if workdir else None) as tmp:
        root = Path(tmp)
        cases_in = bad_files(seed)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda case: _run_case(case, root), cases_in))
        cases = {case.name: result for case, result in zip(cases_in, results, strict=True)}
    failed = [name for name, c in cases.items() if c["problems"]]
    return {"cases": cases, "count": len(cases), "failed": failed, "ok": not failed,
            "seconds": round(time.perf_counter() - started, 1)}


__all__ = ["BadFile", "LiveService", "bad_files", "fuzz_api", "fuzz_data", "serve"]
