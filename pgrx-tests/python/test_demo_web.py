"""The demo's search page (scripts/demo_web.py) in a real browser: headless Chromium
(Debian's chromium + chromium-driver, driven by selenium) uploads an edited copy of a
catalogue photo (cropped, mirrored, rotated, JPEG: shop_demo.customer_photo) and must see
the original product first; a bad upload must show the
database's error, and the page must keep serving. A screenshot of the search is saved in
pgrx-tests/artifacts/ (the README's docs/demo-web.png is a copy of it).

The module loads a small part of the demo catalogue into a database of its own (as the
superuser, with scripts/shop_demo.py's loader), grants the application role pgv_app
SELECT on it, and runs the page's server on a free port, connected as pgv_app."""

import base64
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib

import pytest

import photos
import shop_demo

DATABASE = "pgv_demo_web_test"
PHOTOS = 6  # astronaut, chelsea, coffee, rocket, motorcycle_left, hubble_deep_field
ARTIFACTS = os.path.join(photos.REPO, "pgrx-tests", "artifacts")
SCREENSHOT = os.path.join(ARTIFACTS, "demo-web.png")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for Chromium as root on a machine with a closed network (without the networking
# ones it keeps trying to reach Google's hosts).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1100"]
WAIT_S = 60
SERVER_START_S = 30


@pytest.fixture(scope="module")
def catalogue(cluster, app_role):
    """DATABASE with the first PHOTOS products of the demo catalogue (5 pictures each,
    embedded by the trigger) and the text model's vectors; dropped afterwards."""
    with photos.connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DATABASE}")
    with photos.connect(dbname=DATABASE) as c, c.cursor() as cur:
        cur.execute("SET client_min_messages = warning")
        shop_demo.load_catalogue(cur, photos.names("photo", "other", "artwork")[:PHOTOS])
        text_model = shop_demo.load_text_vectors(cur)
        shop_demo.grant_app_role(cur, app_role)
    yield {"database": DATABASE, "text_model": text_model}
    with photos.connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


@pytest.fixture(scope="module")
def web(catalogue, app_role):
    """The page's server on a free port, as the application role; its URL."""
    cmd = [sys.executable, os.path.join(photos.REPO, "scripts", "demo_web.py"), "--dbname", catalogue["database"],
           "--role", app_role, "--port", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = first_line(proc, SERVER_START_S)
        url = re.search(r"http://\S+/", line)
        assert url, f"demo_web.py did not print its URL: {line!r}"
        yield url.group(0)
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C stops it
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"demo_web.py ended with {proc.returncode}: {proc.stdout.read()}"


def first_line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"demo_web.py printed nothing in {timeout} s")
    line = proc.stdout.readline()
    if proc.poll() is not None:
        raise AssertionError(f"demo_web.py stopped: {line}{proc.stdout.read()}")
    return line


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through /usr/bin/chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: scripts/setup.sh installs Debian's chromium and chromium-driver")
    profile = tempfile.mkdtemp(prefix="pgv-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- what the tests upload ------------------------------------------------------------------

def png_bomb(side=10_000):
    """A side x side grey PNG (100 megapixels, over pg_vision.max_image_pixels' 50) of a few
    hundred kilobytes: a decompression bomb, which the database refuses from its header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\x00" * (side + 1)  # filter byte + one row of black
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_UPLOADS = {
    "empty": (b"", "22P03", "empty"),
    "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "22P03",
            "not a recognised image"),
    "bomb": (None, "54000", "pixels"),  # made when used: png_bomb() takes a second
}


def bad_upload(kind):
    data, state, words = BAD_UPLOADS[kind]
    return (png_bomb() if data is None else data), state, words


# --- helpers --------------------------------------------------------------------------------

def wait_state(driver, *states):
    """Waits until the page says it is in one of `states` (body's data-state)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                        in states)
    return driver.find_element("tag name", "body").get_attribute("data-state")


def open_page(driver, url):
    driver.get(url)
    assert wait_state(driver, "ready", "error") == "ready", driver.find_element("id", "error").text


def upload(driver, tmp_path, filename, data):
    """Chooses a file in the page's file input, as a visitor does, and waits for the answer."""
    path = tmp_path / filename
    path.write_bytes(data)
    driver.execute_script("document.body.dataset.state = 'sent'")
    driver.find_element("id", "file").send_keys(str(path))
    return wait_state(driver, "done", "error")


def shown_results(driver):
    """[(name, similarity)] of the result cards, in page order."""
    cards = driver.find_elements("css selector", "#results .result")
    return [(c.find_element("class name", "name").text,
             float(c.find_element("class name", "similarity").text.split()[-1])) for c in cards]


def images_loaded(driver, selector):
    """How many of the matching <img> have loaded a picture, and how many there are."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return [imgs.filter(i => i.complete && i.naturalWidth > 0).length, imgs.length];", selector)


def post(url, data, content_type="application/octet-stream"):
    """(status, JSON answer) of a POST to the page's server."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


# --- the tests ------------------------------------------------------------------------------

def test_a_catalogue_picture_finds_itself(browser, web, health):
    open_page(browser, web)
    button = browser.find_elements("css selector", "#catalogue button")[2]  # coffee
    browser.execute_script("document.body.dataset.state = 'sent'")
    button.click()
    assert wait_state(browser, "done", "error") == "done"
    name, similarity = shown_results(browser)[0]
    assert name == button.get_attribute("title") and similarity > 0.9999


def test_an_edited_photo_finds_its_product(browser, web, catalogue, tmp_path, health, app_role):
    open_page(browser, web)
    assert upload(browser, tmp_path, "chelsea-edited.jpg", shop_demo.customer_photo("chelsea.png")) == "done", \
        browser.find_element("id", "error").text
    results = shown_results(browser)
    names = [name for name, _ in results]
    assert names and names[0] == "chelsea", f"top result is not the original product: {results}"
    assert len(set(names)) == len(names) == PHOTOS, f"expected each of the {PHOTOS} products once: {names}"
    assert results[0][1] > 0.8 and results[0][1] - results[1][1] > 0.3, f"no clear winner: {results}"
    db_ms = float(browser.find_element("id", "db-time").text.split()[0])
    assert 0 < db_ms < 30_000
    assert images_loaded_eventually(browser, "#query-image") == (1, 1), "the query image is not shown"
    loaded, total = images_loaded_eventually(browser, "#results img")
    assert loaded == total == PHOTOS, "result thumbnails did not load from the database"
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(SCREENSHOT)
    print(f"\nscreenshot of the search page: {SCREENSHOT}")
    # The searches ran as the application role, not as a superuser.
    with photos.connect() as c:
        users = {u for (u,) in c.execute("SELECT usename FROM pg_stat_activity WHERE datname = %s AND "
                                         "application_name = 'pg_vision demo web'", (catalogue["database"],))}
    assert users == {app_role}


def images_loaded_eventually(driver, selector, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        loaded, total = images_loaded(driver, selector)
        if loaded == total or time.monotonic() > deadline:
            return loaded, total
        time.sleep(0.1)


def test_a_dropped_photo_is_searched(browser, web, health):
    """Drag and drop: a drop event carrying a file (an edited rocket photo), as a browser
    makes it when a file is dropped on the zone."""
    open_page(browser, web)
    data = base64.b64encode(shop_demo.customer_photo("rocket.jpg")).decode()
    browser.execute_script("""
        document.body.dataset.state = 'sent';
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    """, data)
    assert wait_state(browser, "done", "error") == "done", browser.find_element("id", "error").text
    assert shown_results(browser)[0][0] == "rocket"
    assert "dropped.jpg" in browser.find_element("id", "query-caption").text


def test_the_page_outlives_its_database_connections(web, catalogue, health):
    """The server's backends terminated (as by a restart of PostgreSQL): the next search
    is answered on a new connection."""
    assert post(web + "api/search", photos.shipped("coffee.png"))[0] == 200
    with photos.connect() as c:
        ended = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                          "AND application_name = 'pg_vision demo web'", (catalogue["database"],)).fetchone()[0]
    assert ended >= 1
    status, answer = post(web + "api/search", photos.shipped("coffee.png"))
    assert status == 200 and answer["results"][0]["name"] == "coffee", answer


BAD_FILES = {"empty": "empty.jpg", "pdf": "invoice.pdf", "bomb": "bomb.png"}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_a_bad_upload_shows_the_database_error(browser, web, tmp_path, health, kind):
    open_page(browser, web)
    data, sqlstate, words = bad_upload(kind)
    assert upload(browser, tmp_path, BAD_FILES[kind], data) == "error"
    error = browser.find_element("id", "error")
    assert error.is_displayed()
    assert f"SQLSTATE {sqlstate}" in error.text and words in error.text, error.text
    assert not browser.find_elements("css selector", "#results .result")
    # The server keeps serving: the next upload is answered.
    assert upload(browser, tmp_path, "coffee.jpg", shop_demo.customer_photo("coffee.png")) == "done"
    assert shown_results(browser)[0][0] == "coffee"
    assert not error.is_displayed()


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_bad_uploads_over_http_get_the_database_error(web, kind, health):
    """The same through the page's API, without a browser: status 422 and the error."""
    data, sqlstate, words = bad_upload(kind)
    status, answer = post(web + "api/search", data)
    assert status == 422 and answer["error"]["sqlstate"] == sqlstate, answer
    assert words in answer["error"]["message"], answer
    status, answer = post(web + "api/search", photos.shipped("rocket.jpg"))
    assert status == 200 and answer["results"][0]["name"] == "rocket", answer


def test_thumbnails_are_the_stored_bytes(web, catalogue):
    with photos.connect(dbname=catalogue["database"]) as c:
        rows = c.execute("SELECT id::text, image FROM product_images ORDER BY id LIMIT 5").fetchall()
    for image_id, stored in rows:
        with urllib.request.urlopen(web + "image/" + image_id, timeout=WAIT_S) as r:
            assert r.read() == bytes(stored), f"image {image_id} was not served as stored"
            assert r.headers["Content-Type"] in ("image/jpeg", "image/png")


def test_search_by_words_with_a_text_model(browser, web, catalogue, health):
    """With a model with a text tower installed (make test installs the fixtures), the page
    offers search by words and labels a random-weight fixture as one."""
    open_page(browser, web)
    section = browser.find_element("id", "text-section")
    if not catalogue["text_model"]:
        assert not section.is_displayed()
        pytest.skip("no model with a text tower is installed")
    assert section.is_displayed() and catalogue["text_model"] in section.text
    if catalogue["text_model"].endswith("_fixture"):
        badge = browser.find_element("id", "fixture-badge")
        assert badge.is_displayed() and "random weights" in badge.text
    browser.find_element("id", "text-query").send_keys("a cat on a sofa")
    browser.execute_script("document.body.dataset.state = 'sent'")
    browser.find_element("css selector", "#text-form button").click()
    assert wait_state(browser, "done", "error") == "done", browser.find_element("id", "error").text
    assert len(shown_results(browser)) == PHOTOS
