"""The console (/ui) in a real browser: Debian's Chromium, headless, driven by Playwright.

Most tests run a real ``gateway serve`` in front of the upstream double (bench/upstream.py:
fast, no vLLM) with API keys, a two-variant route and the demo adapter's manifest; traffic and
feedback are sent while the page is open, and the page must show them without a reload. One
test opens the ``medqa`` experiment on the shared real-vLLM gateway and loads and unloads the
demo adapter there. Every page's screenshot is written under build/screenshots/ for review; no
test may see a console error or a request that leaves the gateway.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)
from playwright.sync_api import (
    TimeoutError as PlaywrightTimeoutError,
)

from bench.upstream import UpstreamDouble
from gateway.admission.keys import hash_key
from tests.conftest import RunningGateway
from tests.support.servers import GatewayProcess, running_gateway

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "screenshots"
ADMIN_KEY = "sb-console-admin-0123456789"
USER_KEY = "sb-console-user-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
USER = {"authorization": f"Bearer {USER_KEY}"}
TIMEOUT_MS = 15_000
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
#: the console writes differences with a minus sign, U+2212
MINUS = "\u2212"


def config(upstream: str) -> str:
    return f"""
auth:
  keys:
    - {{name: app, hash: "{hash_key(USER_KEY)}", scopes: [inference, feedback]}}
    - {{name: ops, hash: "{hash_key(ADMIN_KEY)}", scopes: [admin]}}
models:
  smollm2: {{engine: vllm, urls: ["{upstream}"], upstream_model: upstream-model}}
  # A fleet of two replicas, one of them down: the overview shows it out of rotation.
  big-model-with-a-long-name:
    engine: vllm
    urls: ["{upstream}", "http://127.0.0.1:9"]
    upstream_model: upstream-model
    balance: {{health_interval_s: 0.5}}
adapters:
  folders: ["{REPO / "adapters"}"]
routes:
  qa:
    sticky_key: user
    variants:
      prompted: {{target: smollm2, pipeline: plain, weight: 50}}
      tuned-variant-with-a-long-name: {{target: big-model-with-a-long-name, weight: 50}}
    experiment:
      metrics: {{correct: {{type: boolean}}}}
      primary: correct
      min_samples: 20
      min_effect: 0.05
      guardrails:
        error_rate: {{margin: 0.02}}
"""


@dataclass
class Traffic:
    """Requests and feedback sent as a client would, numbered so every user is new."""

    url: str
    headers: dict[str, str]
    sent: int = 0
    ids: list[str] = field(default_factory=list)

    def send(
        self,
        n: int,
        route: str = "qa",
        correct_share: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        shares = correct_share or {}
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as client:
            for _ in range(n):
                i = self.sent
                self.sent += 1
                body = {"model": route, "messages": [{"role": "user", "content": f"q{i}"}]}
                body.update(extra or {})
                resp = client.post("/v1/chat/completions", json={**body, "user": f"u{i}"})
                assert resp.status_code == 200, resp.text
                inference_id = resp.headers["x-switchboard-inference-id"]
                self.ids.append(inference_id)
                variant = resp.headers["x-switchboard-variant"]
                # Deterministic feedback: variant v is correct on a share of its requests.
                correct = (i * 7919 % 100) < 100 * shares.get(variant, 0.5)
                fb = {"inference_id": inference_id, "name": "correct", "value": correct}
                assert client.post("/v1/feedback", json=fb).status_code == 201


class Console:
    """A page on the console that records console errors and every URL it requests."""

    def __init__(self, browser: Browser, base: str, viewport: ViewportSize = DESKTOP) -> None:
        self.base = base
        self.context = browser.new_context(viewport=viewport)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.requests: list[str] = []
        # A refusal (401/403) is logged by Chromium as a failed resource: expected only where a
        # test presents a bad key, and then allowed explicitly.
        self.allowed = re.compile(r"$^")
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") and not self.allowed.search(message.text):
            self.errors.append(f"{message.type}: {message.text}")

    def open(self, fragment: str = "", key: str | None = ADMIN_KEY) -> Page:
        self.page.goto(f"{self.base}/ui{fragment}")
        if key is not None:
            self.page.get_by_label("API key").fill(key)
            self.page.get_by_role("button", name="Open the console").click()
        return self.page

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def check(self) -> None:
        """Nothing went wrong in the page, and nothing was fetched from outside the gateway."""
        outside = [u for u in self.requests if not u.startswith((self.base + "/", "data:"))]
        assert outside == [], outside
        assert self.errors == []
        # Nothing wider than the window: tables scroll inside their own box, names wrap. The
        # charts follow a viewport change on their next resize callback: wait for that (a
        # condition, bounded), then measure.
        overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        with contextlib.suppress(PlaywrightTimeoutError):
            self.page.wait_for_function(f"{overflow} <= 1", timeout=TIMEOUT_MS)
        wider = self.page.evaluate(overflow)
        assert wider <= 1, f"the page is {wider}px wider than the window"

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), "the browser tests need Chromium: `make system-deps` installs it"
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamDouble]:
    with UpstreamDouble(latency_ms=2, chunks=2) as double:
        yield double


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("console-home")
    with running_gateway(home, config(upstream.url)) as running:
        yield running


RUN_ID = "console-offline-run"


def offline_run(gateway: GatewayProcess) -> None:
    """A small offline evaluation of both variants, through the API ``gateway eval --url`` uses."""
    with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=60) as client:
        for variant, right in (("prompted", 2), ("tuned-variant-with-a-long-name", 3)):
            for i in range(4):
                request = {"model": "qa", "messages": [{"role": "user", "content": f"item {i}"}]}
                call = {"route": "qa", "variant": variant, "run_id": RUN_ID, "request": request}
                outcome = client.post("/v1/evaluations/calls", json=call).json()
                assert outcome["status"] == "ok", outcome
                score = {"run_id": RUN_ID, "inference_id": outcome["inference_id"]}
                resp = client.post("/v1/evaluations/scores", json={**score, "correct": i < right})
                assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess) -> Traffic:
    offline_run(gateway)
    sender = Traffic(gateway.url, USER)
    # Past the burn-in (min_samples 20 per variant), so the difference is drawn.
    sender.send(60, correct_share={"prompted": 0.3, "tuned-variant-with-a-long-name": 0.8})
    return sender


@pytest.fixture
def console(browser: Browser, gateway: GatewayProcess) -> Iterator[Console]:
    opened = Console(browser, gateway.url)
    try:
        yield opened
    finally:
        opened.close()


def api(gateway: GatewayProcess, path: str) -> Any:
    resp = httpx.get(f"{gateway.url}{path}", headers=ADMIN, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def cell(region: Locator, row: str, column: str) -> Locator:
    """The cell of ``column`` in the row headed ``row`` of a table the console drew."""
    header = region.page.get_by_role("rowheader", name=row, exact=True)  # relative to the row
    return region.locator("tbody tr", has=header).locator(f'td[data-label="{column}"]')


def no_reload(page: Page) -> None:
    page.evaluate("window.__sameDocument = 'yes'")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === 'yes'"))


def test_the_overview_shows_every_model_route_and_the_traffic_live(
    console: Console, gateway: GatewayProcess, traffic: Traffic
) -> None:
    page = console.open()
    routes = page.get_by_role("region", name="Routes and their traffic in the last hour")
    expect(routes.get_by_role("link", name="qa")).to_be_visible()
    engines = page.get_by_role("region", name="Engines")
    expect(engines).to_contain_text("big-model-with-a-long-name")
    fleet = engines.locator("tr", has_text="big-model-with-a-long-name")
    expect(fleet).to_contain_text("1/2 in rotation")
    expect(fleet).to_contain_text("r1 ejected")
    expect(page.get_by_role("region", name="Adapters")).to_contain_text("mmlu-med-demo")
    expect(page.locator(".uplot canvas").first).to_be_visible()
    before = api(gateway, "/v1/overview")["traffic"]["routes"]["qa"]["requests"]
    expect(routes.locator("tr", has_text="qa")).to_contain_text(str(before))
    no_reload(page)
    traffic.send(3)
    expect(routes.locator("tr", has_text="qa")).to_contain_text(str(before + 3))
    assert same_document(page)
    console.shot("overview")
    page.set_viewport_size(PHONE)
    expect(routes).to_be_visible()
    console.check()
    console.shot("overview-phone")


def test_the_experiment_page_shows_the_decision_and_updates_as_samples_arrive(
    console: Console, gateway: GatewayProcess, traffic: Traffic
) -> None:
    page = console.open("#/route/qa")
    expect(page.locator(".decision .badge").first).to_have_text(
        re.compile("running|winner|no_difference|guardrail_breach|sample_ratio_mismatch")
    )
    report = api(gateway, "/v1/experiments/qa")
    expect(page.locator(".verdict")).to_have_text(report["verdict"])
    variants = page.get_by_role("region", name=re.compile("^Variants"))
    expect(variants).to_contain_text("tuned-variant-with-a-long-name")
    metrics = page.get_by_role("region", name=re.compile("^Each metric per variant"))
    expect(metrics).to_contain_text("correct")
    expect(page.get_by_role("region", name=re.compile("^Guardrails"))).to_contain_text("error_rate")
    expect(page.get_by_role("region", name="Units at their first assignment")).to_be_visible()
    # The offline run of the same route, beside the live figures and in full below them.
    offline = f"offline accuracy ({RUN_ID})"
    expect(cell(metrics, "prompted", offline)).to_contain_text("0.5")
    expect(cell(metrics, "tuned-variant-with-a-long-name", offline)).to_contain_text("0.75")
    expect(page.get_by_role("region", name=re.compile(f"^Run {RUN_ID}"))).to_contain_text("0.75")
    chart = page.get_by_role("img", name=re.compile("on correct, with its always-valid"))
    expect(chart).to_be_visible()
    expect(chart.locator("canvas")).to_be_visible()
    units = sum(v["units"] for v in report["variants"].values())
    no_reload(page)
    traffic.send(6, correct_share={"prompted": 0.3, "tuned-variant-with-a-long-name": 0.8})
    fresh = api(gateway, "/v1/experiments/qa")
    grown = sum(v["units"] for v in fresh["variants"].values())
    assert grown == units + 6
    for name, figures in fresh["variants"].items():
        expect(cell(variants, name, "units")).to_have_text(str(figures["units"]))
    expect(chart).to_have_attribute(
        "aria-label", re.compile(r"Now -?[\d.]+ with interval \[.*\d+ looks")
    )
    expect(page.get_by_role("img", name="Units per variant as samples arrived")).to_be_visible()
    assert same_document(page)
    console.shot("experiment")
    # The top of the page, for the README (docs/console-experiment.png).
    page.screenshot(
        path=str(SHOTS / "experiment-top.png"),
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": 1500},
    )
    page.set_viewport_size(PHONE)
    console.check()
    console.shot("experiment-phone")


def test_a_variant_links_to_the_inferences_behind_it_and_one_opens_in_full(
    console: Console, gateway: GatewayProcess, traffic: Traffic
) -> None:
    page = console.open("#/route/qa")
    page.get_by_role("link", name="inferences of prompted").click()
    rows = page.get_by_role("region", name="Recent inferences").locator("tbody tr")
    expect(rows.first).to_contain_text("prompted")
    listed = api(gateway, "/v1/inferences?route=qa&variant=prompted")["data"]
    assert {r["variant"] for r in listed} == {"prompted"}
    expect(rows).to_have_count(len(listed))
    expect(page.get_by_label("variant")).to_have_value("prompted")
    no_reload(page)
    before = len(listed)
    traffic.send(4)
    after = len(api(gateway, "/v1/inferences?route=qa&variant=prompted")["data"])
    assert after > before or after == 100
    expect(rows).to_have_count(after)
    assert same_document(page)
    console.shot("inferences")
    newest = listed[0]["id"]
    page.get_by_role("link", name=newest).click()
    expect(page.locator(".page-title")).to_contain_text(newest)
    attempts = page.get_by_role("region", name="Every attempt of this request")
    expect(attempts).to_contain_text(newest)
    expect(page.get_by_role("region", name="Feedback joined to this request")).to_contain_text(
        "correct"
    )
    console.shot("inference")
    # Filters by keyboard: the status select and Enter in the form.
    page.goto(f"{gateway.url}/ui#/inferences")
    page.get_by_label("status").select_option("error")
    page.get_by_label("route").fill("qa")
    page.get_by_label("route").press("Enter")
    expect(page.get_by_role("region", name="Recent inferences")).to_contain_text("No inferences")
    assert "status=error" in page.url and ADMIN_KEY not in page.url
    console.check()


def test_the_adapters_page_shows_state_and_lineage_and_unloads(
    console: Console, gateway: GatewayProcess
) -> None:
    page = console.open("#/adapters")
    region = page.get_by_role("region", name="Adapters in the registry")
    expect(region).to_contain_text("mmlu-med-demo")
    expect(region).to_contain_text("smollm2")
    card = page.locator("#adapter-mmlu-med-demo")
    expect(card).to_contain_text("f388b181ba902011fa072e03be25074bd37e801b69153c751c191ecb3758a63a")
    expect(card).to_contain_text("gateway adapters train")
    expect(card).to_contain_text("mmlu-medical-heldout")
    console.shot("adapters")
    # Unloading a not-loaded adapter takes it out of service (the double has no LoRA API, so
    # loading is the real-vLLM test's).
    state = api(gateway, "/v1/adapters/mmlu-med-demo")["state"]
    if state != "loaded":
        page.get_by_role("button", name="Load mmlu-med-demo").focus()
        assert page.evaluate("document.activeElement.textContent") == "Load mmlu-med-demo"
    console.check()


def test_promote_and_the_other_actions_change_what_the_api_reports(
    console: Console, gateway: GatewayProcess, traffic: Traffic
) -> None:
    page = console.open("#/route/qa")
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    offered = [
        m.group(1)
        for p in schema["paths"]
        if (m := re.fullmatch(r"/v1/experiments/\{name\}/([a-z_-]+)", p))
        and m.group(1) != "history"
    ]
    assert "promote" in offered
    button = page.get_by_role("button", name="Promote tuned-variant-with-a-long-name")
    # Keyboard only: focus, Enter opens the dialog (Cancel has the focus), Escape cancels.
    button.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    console.shot("confirm")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert api(gateway, "/v1/experiments/qa")["promoted"] is None
    button.focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="promote done")).to_be_visible()
    assert api(gateway, "/v1/experiments/qa")["promoted"] == "tuned-variant-with-a-long-name"
    expect(page.locator(".decision")).to_contain_text("was promoted")
    expect(button).to_be_disabled()
    for action in (a for a in ("rollback", "undo") if a in offered):
        before = api(gateway, "/v1/experiments/qa")
        page.locator(f'button[data-action="{action}"]').first.click()
        page.get_by_role("dialog").get_by_role("button", name=action).click()
        expect(page.get_by_role("status").filter(has_text=f"{action} done")).to_be_visible()
        after = api(gateway, "/v1/experiments/qa")
        assert (after["promoted"], after["decision"]["actions"]) != (
            before["promoted"],
            before["decision"]["actions"],
        )
    console.check()


def test_a_key_without_the_admin_scope_is_refused(console: Console) -> None:
    console.allowed = re.compile(r"status of 40[13]")
    page = console.open("", key=USER_KEY)
    expect(page.get_by_text("does not have the admin scope")).to_be_visible()
    expect(
        page.get_by_role("region", name="Routes and their traffic in the last hour")
    ).to_have_count(0)
    console.shot("refused")
    page.get_by_label("API key").fill("sb-not-a-key")
    page.get_by_role("button", name="Open the console").click()
    expect(page.get_by_text("did not accept this key")).to_be_visible()
    # The key never reaches a URL; it is in this tab's session storage only.
    assert all(USER_KEY not in u and "sb-not-a-key" not in u for u in console.requests)
    assert page.evaluate("Object.keys(localStorage).length") == 0
    console.check()


def test_the_medqa_experiment_on_the_real_vllm(
    browser: Browser, gateway_server: RunningGateway
) -> None:
    sender = Traffic(gateway_server.url, {})
    short = {"max_tokens": 16}  # medprompt makes five calls per request: keep them short
    sender.send(4, route="medqa", extra=short)
    console = Console(browser, gateway_server.url)
    try:
        page = console.open("#/route/medqa", key=None)
        expect(page.get_by_role("region", name=re.compile("^Variants"))).to_contain_text("tuned")
        # Before the burn-in (100 units per variant) the difference is not drawn yet: the
        # units per variant are, with a note saying when the difference will be.
        expect(page.get_by_role("img", name="Units per variant as samples arrived")).to_be_visible()
        pair = re.compile(f"(tuned {MINUS} prompted|prompted {MINUS} tuned) on correct")
        expect(
            page.get_by_role("img", name=pair).or_(page.get_by_text("the burn-in"))
        ).to_be_visible()
        no_reload(page)
        sender.send(1, route="medqa", extra=short)
        report = httpx.get(f"{gateway_server.url}/v1/experiments/medqa", timeout=60).json()
        variants = page.get_by_role("region", name=re.compile("^Variants"))
        for name, figures in report["variants"].items():
            expect(cell(variants, name, "requests")).to_have_text(str(figures["n"]))
        assert same_document(page)
        console.shot("medqa-experiment")
        # Load and unload the demo adapter in the real vLLM from the adapters page.
        page.goto(f"{gateway_server.url}/ui#/adapters")
        region = page.get_by_role("region", name="Adapters in the registry")
        expect(region).to_contain_text("mmlu-med-demo")
        state = httpx.get(f"{gateway_server.url}/v1/adapters/mmlu-med-demo", timeout=30).json()
        if state["state"] != "loaded":
            page.get_by_role("button", name="Load mmlu-med-demo").click()
            page.get_by_role("dialog").get_by_role("button", name="load").click()
            expect(region.get_by_role("button", name="Unload mmlu-med-demo")).to_be_visible(
                timeout=120_000
            )
        page.get_by_role("button", name="Unload mmlu-med-demo").click()
        page.get_by_role("dialog").get_by_role("button", name="unload").click()
        expect(region.get_by_role("button", name="Load mmlu-med-demo")).to_be_visible(
            timeout=60_000
        )
        unloaded = httpx.get(f"{gateway_server.url}/v1/adapters/mmlu-med-demo", timeout=30)
        assert unloaded.json()["state"] == "unloaded"
        page.get_by_role("button", name="Load mmlu-med-demo").click()
        page.get_by_role("dialog").get_by_role("button", name="load").click()
        expect(region.get_by_role("button", name="Unload mmlu-med-demo")).to_be_visible(
            timeout=120_000
        )
        loaded = httpx.get(f"{gateway_server.url}/v1/adapters/mmlu-med-demo", timeout=30)
        assert loaded.json()["state"] == "loaded"
        console.shot("medqa-adapters")
        console.check()
    finally:
        console.close()
