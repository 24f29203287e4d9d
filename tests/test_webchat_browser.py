"""The web chat in a real browser (headless Chromium through Selenium), against a real server.

It logs in, chats in Chinese and watches the reply stream in, opens the plugin step, takes
screenshots at desktop and phone width, rates a reply with a better answer, reloads, checks the
database, tries the XSS payloads, stops a stream and regenerates. Screenshots go to
$MOSSLM_SCREENSHOTS (or pytest's tmp_path), never into the repository; their paths are printed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from webchat_fixtures import (  # noqa: E402
    CALC_Q, CALC_REPLY, CODE_Q, STORY_Q, TOOL_PAYLOAD, TOOL_XSS_Q, XSS_Q, XSS_REPLY, start_webchat,
)

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                              shutil.which("google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("the browser test needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

DELAY = 0.05  # seconds per streamed piece: slow enough to watch a reply grow


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def chat(request, tmp_path_factory):
    # MOSSLM_WEBCHAT_MODEL: a model built before by build_webchat_model (saves its training when iterating)
    model = os.environ.get("MOSSLM_WEBCHAT_MODEL") or request.getfixturevalue("webchat_model")
    with start_webchat(tmp_path_factory.mktemp("webchat-serve"), Path(model), token_delay=DELAY) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--lang=zh-CN", "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as e:
        pytest.skip(f"chromium did not start under chromedriver: {e.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("MOSSLM_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def logged_in(browser, chat):
    """The browser on the chat screen, logged in, with a new chat open."""
    browser.get(chat.url + "/")
    if not wait_for(lambda: visible(browser, "composer") or visible(browser, "login-code"), 15):
        raise AssertionError("neither the login nor the chat screen showed")
    if visible(browser, "login-code"):
        login(browser, chat.invite)
    q(browser, "new-chat").click()
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, tid("message-user")), 5)
    chat.generator.delay = DELAY
    return browser


# ---------------------------------------------------------------- helpers

def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    end = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (StaleElementReferenceException, WebDriverException):
            value = None
        if value:
            return value
        if time.monotonic() > end:
            return value
        time.sleep(every)


def q(driver, name: str, within=None):
    return (within or driver).find_element(By.CSS_SELECTOR, tid(name))


def qs(driver, name: str, within=None):
    return (within or driver).find_elements(By.CSS_SELECTOR, tid(name))


def visible(driver, name: str) -> bool:
    return any(e.is_displayed() for e in qs(driver, name))


def login(driver, code: str) -> None:
    q(driver, "login-code").clear()
    q(driver, "login-code").send_keys(code)
    q(driver, "login-submit").click()
    assert wait_for(lambda: visible(driver, "composer"), 10), "the chat screen did not show after login"


LAST_REPLY_JS = """
const all = document.querySelectorAll('[data-testid="message-assistant"]');
const m = all[all.length - 1];
if (!m) return null;
const body = m.querySelector('[data-testid="assistant-body"]');
return {status: m.dataset.status, id: m.dataset.messageId, text: body ? body.innerText : '', count: all.length};
"""


def last_reply(driver) -> dict | None:
    return driver.execute_script(LAST_REPLY_JS)


def new_chat(driver) -> None:
    """The micro model knows its prompts as the first message of a conversation."""
    q(driver, "new-chat").click()
    assert wait_for(lambda: not qs(driver, "message-user"), 5)


def send(driver, text: str) -> None:
    box = q(driver, "composer")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_done(driver, timeout: float = 30.0, count: int | None = None) -> dict:
    def finished():
        r = last_reply(driver)
        if r and r["status"] != "streaming" and not str(r["id"]).startswith("tmp") and (count is None or r["count"] >= count):
            return r
        return None
    r = wait_for(finished, timeout)
    assert r, f"the reply did not finish: {last_reply(driver)}"
    return r


def screenshot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


# ---------------------------------------------------------------- the tests

def test_login_stream_plugin_feedback_reload(browser, chat, shots):
    driver = browser
    driver.get(chat.url + "/")
    # 1. login: a wrong code is refused with a message, the right one lets in
    assert wait_for(lambda: visible(driver, "login-code"), 15), "the login screen did not show"
    assert driver.execute_script("return document.documentElement.lang") == "zh-CN"
    q(driver, "login-code").send_keys("moss-inv-wrong-code")
    q(driver, "login-submit").click()
    error = wait_for(lambda: visible(driver, "login-error") and q(driver, "login-error").text, 10)
    assert error and "邀请码" in error, error
    assert not visible(driver, "composer")
    login(driver, chat.invite)
    assert visible(driver, "new-chat") and visible(driver, "settings-open")

    # 2. the Chinese question: the reply streams in, growing, then completes
    send(driver, CALC_Q)
    assert wait_for(lambda: visible(driver, "stop"), 10), "Stop did not replace Send while streaming"
    lengths = []
    end = time.monotonic() + 40
    while time.monotonic() < end:
        r = last_reply(driver)
        if r and r["status"] == "streaming" and r["text"]:
            if not lengths or lengths[-1] != len(r["text"]):
                lengths.append(len(r["text"]))
        elif r and r["status"] != "streaming" and not str(r["id"]).startswith("tmp"):
            break
        time.sleep(0.03)
    r = wait_done(driver)
    assert r["status"] == "complete", r
    assert len(set(lengths)) >= 3, f"the reply did not visibly stream: lengths seen {lengths}"
    assert lengths == sorted(lengths), lengths
    assert "7006652" in r["text"], r
    assert CALC_REPLY[:10] in r["text"]
    assert visible(driver, "send") and not visible(driver, "stop")
    assert q(driver, "message-user").text == CALC_Q

    # 3. the plugin step: collapsed, its summary the call and its result; open, the exact fields
    reply = qs(driver, "message-assistant")[-1]
    step = q(driver, "plugin-step", reply)
    assert step.tag_name == "details" and step.get_attribute("open") is None
    summary = step.find_element(By.TAG_NAME, "summary")
    assert 'Calculate("1234*5678")' in summary.text and "7006652" in summary.text, summary.text
    summary.click()
    assert wait_for(lambda: q(driver, "plugin-commands", reply).is_displayed(), 5)
    assert q(driver, "plugin-commands", reply).text == 'Calculate("1234*5678")'
    assert "7006652" in q(driver, "plugin-results", reply).text
    assert "需要计算" in q(driver, "plugin-thoughts", reply).text

    # 4. screenshots with the step open, desktop then phone width
    desktop = screenshot(driver, shots, "webchat-desktop.png")
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        time.sleep(0.3)
        assert not q(driver, "new-chat").is_displayed() or \
            driver.execute_script("return document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page is wider than the phone: {width}px"
        phone = screenshot(driver, shots, "webchat-phone.png")
        driver.find_element(By.ID, "menu-open").click()
        time.sleep(0.4)
        assert q(driver, "new-chat").is_displayed() and qs(driver, "conversation-item")[0].is_displayed()
        screenshot(driver, shots, "webchat-phone-sidebar.png")
        driver.find_element(By.ID, "close-menu").click()
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    time.sleep(0.3)
    assert desktop.stat().st_size > 10_000 and phone.stat().st_size > 10_000

    # 5. thumbs down with a better answer: the rating shows as chosen
    reply = qs(driver, "message-assistant")[-1]
    message_id = reply.get_attribute("data-message-id")
    q(driver, "thumb-down", reply).click()
    form = wait_for(lambda: q(driver, "feedback-form"), 5)
    better = "1234*5678=7006652。"
    q(driver, "feedback-comment", form).send_keys("太啰嗦")
    q(driver, "feedback-better", form).send_keys(better)
    q(driver, "feedback-submit", form).click()
    assert wait_for(lambda: not qs(driver, "feedback-form"), 5), "the form did not close"
    down = wait_for(lambda: q(driver, "thumb-down", qs(driver, "message-assistant")[-1]), 5)
    assert wait_for(lambda: q(driver, "thumb-down").get_attribute("aria-pressed") == "true", 5)
    assert "chosen" in down.get_attribute("class")
    assert q(driver, "thumb-up").get_attribute("aria-pressed") == "false"

    # 6. reload: the conversation is listed; opened, its messages are back
    driver.refresh()
    assert wait_for(lambda: visible(driver, "composer"), 15), "the session did not survive a reload"
    items = wait_for(lambda: qs(driver, "conversation-item"), 10)
    assert items and items[0].text == CALC_Q[:40], [i.text for i in items]
    items[0].click()
    assert wait_for(lambda: qs(driver, "message-user") and qs(driver, "message-user")[0].text == CALC_Q, 10)
    r = last_reply(driver)
    assert r["status"] == "complete" and "7006652" in r["text"] and r["id"] == message_id
    assert q(driver, "thumb-down").get_attribute("aria-pressed") == "true"
    q(driver, "thumb-down").click()
    assert wait_for(lambda: q(driver, "feedback-better").get_attribute("value") == better, 5)
    driver.find_element(By.CSS_SELECTOR, '[data-testid="feedback-form"] button[type="button"]:not(.link)').click()

    # 7. the database: the conversation, both messages, the feedback with the better answer
    db = chat.store.conn()
    (conv_id, title), = db.execute(
        "SELECT c.id, c.title FROM conversations c JOIN messages m ON m.conversation_id = c.id WHERE m.id = ?",
        (message_id,)).fetchall()
    assert title == CALC_Q[:40]
    rows = db.execute("SELECT role, content, status, parent_id, id FROM messages WHERE conversation_id = ? "
                      "ORDER BY created_at, rowid", (conv_id,)).fetchall()
    assert [(row[0], row[2]) for row in rows] == [("user", "complete"), ("assistant", "complete")], rows
    assert rows[0][1] == CALC_Q and "7006652" in rows[1][1] and rows[1][3] == rows[0][4]
    feedback = db.execute("SELECT rating, better_answer, comment FROM feedback WHERE message_id = ?",
                          (message_id,)).fetchone()
    assert tuple(feedback) == ("down", better, "太啰嗦"), feedback
    calls = db.execute("SELECT name, command FROM plugin_calls WHERE message_id = ?", (message_id,)).fetchall()
    assert [tuple(c) for c in calls] == [("Calculate", 'Calculate("1234*5678")')]


def test_markdown_and_injection(logged_in, chat):
    driver = logged_in
    # Markdown: a code block with a copy button, bold text
    send(driver, CODE_Q)
    r = wait_done(driver)
    reply = qs(driver, "message-assistant")[-1]
    body = q(driver, "assistant-body", reply)
    assert body.find_element(By.CSS_SELECTOR, "pre code").text.strip() == 'print("hello world")'
    assert body.find_element(By.TAG_NAME, "strong").text == "python"
    assert body.find_element(By.CSS_SELECTOR, "pre .code-copy").get_attribute("aria-label")
    assert r["status"] == "complete"

    # the payload in the reply, then in a tool's result: shown as text, never run
    new_chat(driver)
    send(driver, XSS_Q)
    r = wait_done(driver)
    assert r["status"] == "complete", r
    assert "<script>window.__pwned=1</script>" in r["text"] and 'onerror="window.__pwned=2"' in r["text"], r["text"]
    xss_body = q(driver, "assistant-body", qs(driver, "message-assistant")[-1]).text
    new_chat(driver)
    send(driver, TOOL_XSS_Q)
    r = wait_done(driver)
    reply = qs(driver, "message-assistant")[-1]
    step = q(driver, "plugin-step", reply)
    step.find_element(By.TAG_NAME, "summary").click()
    results = wait_for(lambda: q(driver, "plugin-results", reply).text, 5)
    assert TOOL_PAYLOAD in results, results
    assert "<img" in step.find_element(By.TAG_NAME, "summary").text
    time.sleep(0.5)  # give an injected onerror its chance to fire
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    injected = driver.execute_script(
        "return document.querySelectorAll('#messages script, #messages img, #messages iframe, #messages [onerror]').length")
    assert injected == 0
    for user in qs(driver, "message-user"):
        assert user.find_elements(By.CSS_SELECTOR, "*") == [] or not user.find_elements(By.CSS_SELECTOR, "script, img")
    assert XSS_REPLY.split("<script>")[1].split("</script>")[0] in xss_body


def test_stop_keeps_text(logged_in, chat):
    driver = logged_in
    chat.generator.delay = 0.4
    send(driver, STORY_Q)
    assert wait_for(lambda: (last_reply(driver) or {}).get("text", "").strip() and
                    last_reply(driver)["status"] == "streaming", 20), "no text streamed before Stop"
    kept = last_reply(driver)["text"]
    q(driver, "stop").click()
    r = wait_done(driver, 10)
    chat.generator.delay = DELAY
    assert r["status"] == "stopped", r
    assert r["text"].strip() and r["text"].startswith(kept[: max(1, len(kept) - 1)].strip()[:5]), (kept, r)
    assert len(r["text"]) < len("Once there was a small model. It said MOSSLM-MODERATION-TEST out loud. The end.")
    assert visible(driver, "send")
    (status, content), = chat.store.conn().execute("SELECT status, content FROM messages WHERE id = ?",
                                                   (r["id"],)).fetchall()
    assert status == "stopped" and content.strip()


def test_regenerate_and_branches(logged_in, chat):
    driver = logged_in
    send(driver, CODE_Q)
    first = wait_done(driver)
    q(driver, "regenerate", qs(driver, "message-assistant")[-1]).click()
    second = wait_for(lambda: (lambda r: r if r and r["id"] != first["id"] and r["status"] != "streaming"
                               and not str(r["id"]).startswith("tmp") else None)(last_reply(driver)), 30)
    assert second and second["status"] == "complete", second
    reply = qs(driver, "message-assistant")[-1]
    assert q(driver, "branch-label", reply).text == "2/2"
    assert len(qs(driver, "message-user")) == 1 and len(qs(driver, "message-assistant")) == 1
    q(driver, "branch-prev", reply).click()
    assert wait_for(lambda: q(driver, "branch-label", qs(driver, "message-assistant")[-1]).text == "1/2", 5)
    assert last_reply(driver)["id"] == first["id"]
    q(driver, "branch-next").click()
    assert wait_for(lambda: last_reply(driver)["id"] == second["id"], 5)

    # edit and resend the last message: a new branch of the user message, the old one kept
    q(driver, "edit-last").click()
    area = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, ".edit-area"), 5)
    area.clear()
    area.send_keys(CALC_Q)
    area.send_keys(Keys.ENTER)
    r = wait_done(driver, 30)
    assert r["id"] not in (first["id"], second["id"]) and "7006652" in r["text"]
    user = qs(driver, "message-user")[-1]
    assert user.text.startswith(CALC_Q) and q(driver, "branch-label", user).text == "2/2"
    q(driver, "branch-prev", user).click()
    assert wait_for(lambda: qs(driver, "message-user")[-1].text.startswith(CODE_Q), 5)
    assert last_reply(driver)["id"] in (first["id"], second["id"])

    # the settings panel opens and closes; the language switch changes the page
    q(driver, "settings-open").click()
    panel = wait_for(lambda: q(driver, "settings-panel").is_displayed() and q(driver, "settings-panel"), 5)
    assert "Calculate" in panel.text
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert wait_for(lambda: not q(driver, "settings-panel").is_displayed(), 5), "Escape did not close the settings"
    q(driver, "lang-toggle").click()
    assert wait_for(lambda: driver.execute_script("return document.documentElement.lang") == "en", 5)
    assert q(driver, "send").text == "Send"
    q(driver, "lang-toggle").click()
    assert wait_for(lambda: q(driver, "send").text == "发送", 5)


FAKE_BUSY_JS = """
const real = window.fetch;
window.fetch = (url, init) => {
  if (url !== '/api/chat' || window.__busyOnce) return real(url, init);
  window.__busyOnce = true;
  const body = JSON.stringify({error: {message: 'busy', type: 'server_error', param: null, code: 'server_busy'}});
  return Promise.resolve(new Response(body, {status: 503, headers: {'Retry-After': '7', 'Content-Type': 'application/json'}}));
};
"""


def test_blocked_busy_and_expired_session(browser, webchat_model_path, tmp_path):
    """Moderation replaces the reply; a 503 keeps the text and offers retry; an expired session
    goes back to login and keeps the unsent text."""
    driver = browser
    with start_webchat(tmp_path / "serve", webchat_model_path, token_delay=0.02, moderation="both") as served:
        driver.get(served.url + "/")
        assert wait_for(lambda: visible(driver, "login-code") or visible(driver, "composer"), 15)
        if visible(driver, "composer"):  # still logged in to the other server's origin? (different port: no)
            q(driver, "logout").click()
        login(driver, served.invite)

        # moderation: the story's second sentence holds the test word; no partial text stays
        send(driver, STORY_Q)
        r = wait_done(driver, 30)
        assert r["status"] == "blocked", r
        assert "MOSSLM-MODERATION-TEST" not in r["text"] and "审核" in r["text"], r
        assert "审核" in q(driver, "notice").text

        # 503 with Retry-After: a calm notice with the wait, the text back in the input, retry works
        q(driver, "new-chat").click()
        driver.execute_script(FAKE_BUSY_JS)
        send(driver, CALC_Q)
        notice = wait_for(lambda: visible(driver, "notice") and q(driver, "notice").text, 5)
        assert notice and ("7" in notice or "6" in notice) and "秒" in notice, notice
        assert q(driver, "composer").get_attribute("value") == CALC_Q
        assert not qs(driver, "message-user")
        q(driver, "retry").click()
        r = wait_done(driver, 30)
        assert r["status"] == "complete" and "7006652" in r["text"], r
        assert q(driver, "composer").get_attribute("value") == ""

        # the session ends on the server: back to login, the unsent text kept
        db = served.store.conn()
        db.execute("DELETE FROM sessions")
        db.commit()
        send(driver, "还没发出去的话")
        assert wait_for(lambda: visible(driver, "login-code"), 10), "an expired session did not lead to login"
        assert "登录" in q(driver, "login-error").text
        login(driver, served.invite)
        assert q(driver, "composer").get_attribute("value") == "还没发出去的话"


@pytest.fixture
def webchat_model_path(request):
    return Path(os.environ.get("MOSSLM_WEBCHAT_MODEL") or request.getfixturevalue("webchat_model"))
