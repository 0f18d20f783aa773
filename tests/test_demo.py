"""demo.py in a real headless browser (Debian's chromium + chromedriver, driven by Selenium): type a
topic, pick an ending, click Generate, and a story appears; an empty topic shows a message. Also the
request checks and an engine error (a closed model) as a message, on a real model.

The page serves the bundled models/tinystories-cpu.bin when it exists, else the 260K llama2.c model
from ../shared. DEMO_SCREENSHOT=docs/demo.png saves the page with its story there (how the
screenshot in docs/ is made); otherwise it goes to the test's temporary directory.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from conftest import AIDREAMS, ROOT, need

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BUNDLED = ROOT / "models" / "tinystories-cpu.bin"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1000,1250"]


def _model_args():
    if BUNDLED.is_file():
        return [str(BUNDLED)]
    return [str(need(AIDREAMS / "aidreams260K.bin")), "--tokenizer", str(AIDREAMS / "tok512.bin")]


def _open_model():
    babyllama = pytest.importorskip("babyllama", reason="the babyllama bindings are not built")
    args = _model_args()
    return babyllama.Model(args[0], tokenizer=args[2] if len(args) > 2 else None)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    pytest.importorskip("babyllama", reason="the babyllama bindings are not built")
    model = _model_args()
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--model", *model,
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"demo.py exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("demo.py did not serve its page within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="babyllama-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _page(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    return wait, (lambda css: driver.find_element(By.CSS_SELECTOR, css))


def test_story_appears(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    wait, find = _page(browser, server)
    find("#topic textarea").send_keys("a little dog who finds a lost red ball in the park")
    sad = [lb for lb in browser.find_elements(By.CSS_SELECTOR, "#ending label")
           if lb.text.strip() == "sad ending"]
    assert sad, "no 'sad ending' choice on the page"
    sad[0].click()
    assert find("#ending input[value='sad']").is_selected()
    find("#sampling button").click()  # open the sampling controls; a fixed seed
    wait.until(lambda d: find("#seed input").is_displayed())
    find("#seed input").clear()
    find("#seed input").send_keys("42")
    find("#generate").click()
    wait.until(lambda d: find("#status").text.startswith("Done:"))
    assert find("#status").text.endswith("seed 42.")
    story = find("#story textarea").get_attribute("value")
    assert len(story.split()) >= 5, f"no story on the page: {story!r}"
    assert "Traceback" not in browser.page_source
    shot = os.environ.get("DEMO_SCREENSHOT") or str(tmp_path / "demo.png")
    browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000


def test_empty_topic_shows_message(server, browser):
    wait, find = _page(browser, server)
    find("#topic textarea").send_keys("   ")
    find("#generate").click()
    wait.until(lambda d: "Please say what the story should be about." in find("#status").text)
    assert find("#story textarea").get_attribute("value") == ""


def test_request_checks_and_engine_error():
    import demo
    model = _open_model()
    n = model.config.seq_len
    ok = ("a cat", "sad", ["Dialogue", "BadEnding"], 0.8, 0.9, 10, 0)
    prompt, kw = demo.check_request(*ok, seq_len=n)
    assert prompt == "Write a story about: a cat\nWith: sad ending\nFeatures: Dialogue\n\n### Story:\n"
    assert 1 <= kw["seed"] <= demo.MAX_SEED and kw["max_new_tokens"] == 10
    for i, bad, msg in [(0, "", "Please say"), (0, "x" * 501, "too long"), (1, "meh", "happy or"),
                        (2, ["Sadness"], "Unknown narrative"), (3, "hot", "numbers"),
                        (3, 5.0, "Temperature"), (5, n + 1, "Max tokens"), (6, -1, "Seed")]:
        args = list(ok)
        args[i] = bad
        with pytest.raises(ValueError, match=msg):
            demo.check_request(*args, seq_len=n)
    with pytest.raises(ValueError, match="BadEnding asks for a sad ending"):
        demo.check_request("a cat", "happy", ["BadEnding"], 0.8, 0.9, 10, 0, seq_len=n)
    # an engine error (here: the model was closed under the page) is a message, not a raise
    closed = _open_model()
    closed.close()
    *_, (story, status) = demo.story_stream(closed, "a cat", "happy", [], 0.8, 0.9, 10, 1)
    assert story == "" and status.startswith("**Error:** the engine failed: ")
    assert "\n" not in status
    # a good request streams growing text and ends with Done
    steps = list(demo.story_stream(model, "a cat", "happy", [], 0.8, 0.9, 40, 3))
    assert steps[-1][1].startswith("Done:") and steps[-1][0]
    assert all(b[0].startswith(a[0]) for a, b in zip(steps[:-2], steps[1:-1]))


def test_cli_bad_model(tmp_path):
    pytest.importorskip("babyllama", reason="the babyllama bindings are not built")
    r = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--model",
                        str(tmp_path / "missing.bin")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "missing.bin" in r.stderr
    assert r.stderr.strip().count("\n") == 0
