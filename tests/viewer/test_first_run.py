"""A good first run: ``serve`` on an empty home prints the exact command that bootstraps the
first administrator; the demo prints its pathologist's enrolment link (not discarded), its
home and how to get a fresh login link; the enrolment page names the user a link was issued
for and asks only what the link needs. Real processes (the demo script, the CLI, the HTTPS
server) and Debian Chromium."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.processes import free_port
from tests.viewer.conftest import Person, secret_of

ROOT = Path(__file__).resolve().parents[2]
TILESERVER = Path(sys.executable).parent / "tileserver"  # the console script set-up installs
PASSWORD = "first run test password pat"  # test-only
DEMO_USER = "demo-pathologist"


class Output:
    """The lines a child process prints, read as they come (by a thread: a select on the
    pipe would miss lines already in the reader's buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, done: Callable[[str], bool], timeout: float = 120) -> str:
        """Read until a line satisfies ``done``; that line, stripped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break  # the process ended
            self.lines.append(line)
            if done(line):
                return line.strip()
        err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
        raise AssertionError(f"not printed in time; got: {self.lines} {err}")

    def quiet(self, seconds: float) -> list[str]:
        """What it prints in the next ``seconds``."""
        said = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is not None:
                said.append(line)
        return said

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def start(args: list[str], env: dict[str, str]) -> Output:
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group: stopped with all it started
    )
    return Output(proc)


def stop(output: Output) -> None:
    proc = output.proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    output.reader.join(timeout=10)  # it ends at the end of the output
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def shell(command: str) -> str:
    """An operator pasting a printed command into a shell; what it prints."""
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, (command, done.stderr)
    return done.stdout


# Where a server keeps its state: each test's own, never the caller's.
STATE = ("TILESERVER_HOME", "TILESERVER_DATABASE", "TILESERVER_AUDIT_DATABASE", "TILESERVER_KEK")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STATE}
    return {**env, **extra}


def context_for(browser: Any, base: str) -> Any:
    context = browser.new_context(base_url=base, ignore_https_errors=True)
    context.set_default_timeout(20_000)
    return context


# -- serve on an empty home ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_an_empty_home_prints_how_to_bootstrap(
    workers: int, tmp_path: Path, browser: Any
) -> None:
    home, stores = tmp_path / "home", tmp_path / "stores"
    stores.mkdir()
    port = "0" if workers == 1 else str(free_port())
    args = [str(TILESERVER), "serve", str(stores), "--port", port, "--workers", str(workers)]
    server = start(args, environment(TILESERVER_HOME=str(home)))
    try:
        served = server.until(lambda line: " at https://" in line, timeout=60)
        base = re.search(r"https://[\d.:]+", served).group(0)  # type: ignore[union-attr]
        server.until(lambda line: "no users yet" in line)
        command = server.until(lambda line: "users bootstrap" in line)
        # The exact command: this home, this program, this server's address.
        assert command == (
            f"TILESERVER_HOME={shlex.quote(str(home))} {shlex.quote(str(TILESERVER))} "
            f"users bootstrap --url {base}"
        )
        if workers == 1:
            assert server.lines[0].startswith("serving 0 slide(s)")  # first, as scripts expect
            # The link it prints opens the set-up page, where the administrator picks a name.
            link = shell(command).strip().splitlines()[-1]
            assert link.startswith(f"{base}/login?setup=")
            context = context_for(browser, base)
            page = context.new_page()
            page.goto(link)
            page.wait_for_selector("#enrol-username:not([disabled])")
            assert page.is_visible("#enrol-username") and page.is_hidden("#enrol-account")
            assert "first administrator" in (page.text_content("#enrol-intro") or "")
            admin = Person("ada", PASSWORD)
            page.fill("#enrol-username", admin.name)
            page.fill("#enrol-password", admin.password)
            page.fill("#enrol-password2", admin.password)
            page.click("#enrol-submit")
            page.wait_for_selector("#confirm-form:not(.hidden)")
            secret = page.get_attribute("#enrol-secret", "data-secret") or ""
            admin.secret = secret_of(f"otpauth://totp/x?secret={secret}")
            page.fill("#confirm-code", admin.fresh_code())
            page.click("#confirm-submit")
            page.wait_for_url(re.compile(r"/$"))
            context.close()
    finally:
        stop(server)
    if workers == 1:
        # Someone can sign in now: the next start says nothing about bootstrapping.
        server = start(args, environment(TILESERVER_HOME=str(home)))
        try:
            server.until(lambda line: " at https://" in line, timeout=60)
            assert server.quiet(1.5) == []
        finally:
            stop(server)


# -- the demo -----------------------------------------------------------------------------------


@dataclass
class Demo:
    output: Output
    out: Path
    base: str
    enrol_link: str


def run_demo(out: Path, port: int) -> Output:
    """scripts/demo.sh up to its server's one-time login link (set-up already done)."""
    env = environment(DEMO_OUT=str(out), PORT=str(port))
    demo = start(["bash", "scripts/demo.sh", "--no-setup"], env)
    demo.until(lambda line: line.startswith("one-time login link (10 minutes): "), timeout=180)
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    port = free_port()
    output = run_demo(out, port)
    try:
        links = re.findall(r"https://\S+/login\?setup=\S+", output.text)
        assert len(links) == 1, output.text
        yield Demo(output, out, f"https://127.0.0.1:{port}", links[0])
    finally:
        stop(output)


def test_demo_prints_the_enrolment_link_its_home_and_how_to_sign_in_again(demo: Demo) -> None:
    text = demo.output.text
    assert f"The demo's home (keys, accounts, audit trail): {demo.out / 'home'}" in text
    assert f"one-time enrolment link for {DEMO_USER}" in text
    assert demo.enrol_link.startswith(f"{demo.base}/login?setup=")
    assert f"{demo.base}/auth/link?token=" in demo.output.lines[-1]  # the server's own
    assert f"users login-link {DEMO_USER} --url {demo.base}" in text


def test_demo_pathologist_enrols_on_a_page_that_names_her(demo: Demo, browser: Any) -> None:
    context = context_for(browser, demo.base)
    page = context.new_page()
    posted: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: posted.append(r.post_data_json) if r.url.endswith("/auth/enrol") else None,
    )
    page.goto(demo.enrol_link)
    page.wait_for_selector("#enrol-account:not(.hidden)")
    assert page.text_content("#enrol-name") == DEMO_USER
    # No name to type: the link decides it (the server would ignore another).
    shown = page.eval_on_selector_all(
        "#enrol-form input", "nodes => nodes.filter(n => n.offsetParent).map(n => n.id)"
    )
    assert shown == ["enrol-password", "enrol-password2"]
    assert page.evaluate("document.activeElement.id") == "enrol-password"
    page.fill("#enrol-password", PASSWORD)
    page.fill("#enrol-password2", PASSWORD)
    page.click("#enrol-submit")
    page.wait_for_selector("#confirm-form:not(.hidden)")
    assert posted and "username" not in posted[0], posted
    pat = Person(DEMO_USER, PASSWORD)
    secret = page.get_attribute("#enrol-secret", "data-secret") or ""
    pat.secret = secret_of(f"otpauth://totp/x?secret={secret}")
    page.fill("#confirm-code", pat.fresh_code())
    page.click("#confirm-submit")
    page.wait_for_url(re.compile(r"/$"))
    page.wait_for_selector(".slide-card")
    assert page.text_content("#user-name") == DEMO_USER
    assert page.eval_on_selector_all(".case", "nodes => nodes.map(n => n.dataset.case)") == ["demo"]

    # The link is spent: the page says so at once and offers nothing to fill in.
    again = context_for(browser, demo.base).new_page()
    again.goto(demo.enrol_link)
    again.wait_for_selector("#login-message.error")
    assert "unknown, used or expired" in (again.text_content("#login-message") or "")
    assert again.is_disabled("#enrol-password") and again.is_disabled("#enrol-submit")
    again.context.close()
    context.close()


def test_enrolment_link_endpoint_refuses_bad_input(demo: Demo, browser: Any) -> None:
    request = context_for(browser, demo.base).request
    token = parse_qs(urlsplit(demo.enrol_link).query)["setup"][0]
    cases = [
        ({"token": "not-a-token"}, "unknown, used or expired"),
        ({"token": 7}, "must be a string"),
        ({"token": "x" * 2000}, "at most"),
        ([token], "must be an object"),
    ]
    for body, message in cases:
        reply = request.post("/auth/enrol/link", data=body)
        assert reply.status == 400 and message in reply.json()["error"], (body, reply.text())
    reply = request.post(
        "/auth/enrol/link", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert reply.status == 400 and "JSON" in reply.json()["error"]
    request.dispose()


def test_a_printed_login_link_command_signs_the_pathologist_in(demo: Demo, browser: Any) -> None:
    command = next(line.strip() for line in demo.output.lines if "users login-link" in line)
    link = shell(command).strip().splitlines()[-1]
    assert link.startswith(f"{demo.base}/auth/link?token=")
    context = context_for(browser, demo.base)
    page = context.new_page()
    page.goto(link)
    page.wait_for_url(re.compile(r"/$"))
    page.wait_for_selector(".slide-card")
    assert page.text_content("#user-name") == DEMO_USER
    context.close()


def test_demo_again_after_enrolment_signs_in_with_the_password(demo: Demo) -> None:
    listed = subprocess.run(
        [str(TILESERVER), "users", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(TILESERVER_HOME=str(demo.out / "home")),
    )
    state = dict(line.split()[::2] for line in listed.stdout.splitlines())
    # The enrolment test (earlier in this module) enrolled her.
    assert state.get(DEMO_USER) == "active", listed.stdout
    stop(demo.output)  # one demo at a time
    port = free_port()
    again = run_demo(demo.out, port)
    try:
        assert "/login?setup=" not in again.text
        assert f"{DEMO_USER} has enrolled: sign in at https://127.0.0.1:{port}/login" in again.text
        assert f"users login-link {DEMO_USER} --url https://127.0.0.1:{port}" in again.text
    finally:
        stop(again)
