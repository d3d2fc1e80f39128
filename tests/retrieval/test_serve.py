"""gdf-pyg serve: the JSON API through FastAPI's test client, concurrency through a live server,
and the page in a real headless browser."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gdf_pyg.cli import main

from ..conftest import TINY_RUN, write_image

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'gdf-pyg[serve]')")
from fastapi.testclient import TestClient  # noqa: E402

from gdf_pyg.retrieval.serve import SearchService, create_app, running  # noqa: E402

CLASSES = ["BLACK SWAN", "BLUE JAY", "ROCK DOVE"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A trained model and an index of a collection with one photo that links out of it."""
    tmp = tmp_path_factory.mktemp("serve")
    photos = tmp / "photos"
    for c, name in enumerate(CLASSES):
        for j in range(6):
            write_image(photos / name / f"{j + 1}.jpg", c * 10 + j)
    outside = tmp / "private" / "secret.jpg"
    write_image(outside, 99)
    (photos / "ROCK DOVE" / "linked.jpg").symlink_to(outside)
    run = tmp / "run"
    assert main(["train", "--out", str(run), "--no-progress", f"data.root={photos}", "train.bits=[12]",
                 "train.frozen_backbone=true", *TINY_RUN, "optim.epochs=2"]) == 0
    assert main(["index", "--checkpoint", str(run / "bits12" / "best.pt"), "--images", str(photos), "--out",
                 str(tmp / "index"), "--no-progress"]) == 0
    service = SearchService.open(tmp / "index", device="cpu", max_upload_bytes=200_000, max_k=12)
    return service, photos, outside


@pytest.fixture(scope="module")
def client(collection):
    return TestClient(create_app(collection[0]))


def upload(client, path_or_bytes, k=5, name="photo.jpg"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return client.post(f"/api/search?k={k}", files={"image": (name, data, "image/jpeg")})


def test_the_page_and_the_collection(client, collection):
    service, photos, _ = collection
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "/api/search" in page.text
    info = client.get("/api/info").json()
    assert info == {"photos": 19, "bits": 12, "classes": CLASSES, "labelled": True, "max_k": 12,
                    "max_upload_bytes": 200_000}
    items = client.get("/api/items?offset=2&limit=3").json()
    assert items["total"] == 19 and [i["id"] for i in items["items"]] == [2, 3, 4]
    first = client.get("/api/image/0")
    assert first.status_code == 200 and first.content == Path(service.saved.paths[0]).read_bytes()


def test_a_search_by_upload_and_by_photo(client, collection):
    service, photos, _ = collection
    by_upload = upload(client, photos / "BLUE JAY" / "3.jpg", k=5).json()
    row = service.saved.paths.index(str((photos / "BLUE JAY" / "3.jpg").resolve()))
    stored = "".join("1" if b > 0 else "0" for b in __import__("gdf_pyg.retrieval.index", fromlist=["x"]).unpack_codes(
        service.saved.packed[row:row + 1], 12)[0].tolist())
    assert by_upload["query"]["code"] == stored  # the upload is encoded exactly as the index was
    assert len(by_upload["hits"]) == 5 and by_upload["hits"][0]["distance"] == 0
    assert [h["rank"] for h in by_upload["hits"]] == [1, 2, 3, 4, 5]
    assert by_upload["matching"] is None  # an upload has no class unless it says so
    labelled = client.post("/api/search?k=5", files={"image": ("x.jpg", (photos / "BLUE JAY" / "3.jpg").read_bytes())},
                           data={"label": "BLUE JAY"}).json()
    assert labelled["matching"] == sum(h["label"] == "BLUE JAY" for h in labelled["hits"])
    by_id = client.post("/api/search?k=4", data={"id": str(row)}).json()
    assert by_id["query"] == {"id": row, "label": "BLUE JAY", "code": stored}
    assert by_id["hits"][0]["distance"] == 0 and by_id["matching"] == sum(h["match"] for h in by_id["hits"])
    assert [h["id"] for h in by_id["hits"]] == [h["id"] for h in by_upload["hits"][:4]]


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, collection):
    _, photos, _ = collection
    jpeg = (photos / "BLACK SWAN" / "1.jpg").read_bytes()
    cases = [
        (upload(client, b"this is not an image", name="notes.txt"), 400, "notes.txt: not a readable image"),
        (upload(client, b"", name="empty.jpg"), 400, "empty.jpg: the upload is empty"),
        (upload(client, jpeg[: len(jpeg) // 3], name="cut.jpg"), 400, "cut.jpg: not a readable image"),
        (upload(client, jpeg + b"\0" * 200_000, name="big.jpg"), 413, "more than the 200000 accepted"),
        (upload(client, jpeg, k=0), 422, "k=0: expected 1 to 12"),
        (upload(client, jpeg, k=13), 422, "k=13: expected 1 to 12"),
        (client.post("/api/search", data={"id": "19"}), 404, "no photo 19"),
        (client.post("/api/search"), 400, "send either a photo"),
        (client.post("/api/search", data={"id": "1"}, files={"image": ("a.jpg", jpeg)}), 400, "send either a photo"),
        (client.get("/api/image/-1"), 404, "no photo -1"),
        (client.get("/api/image/1000"), 404, "no photo 1000"),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in response.json()["detail"], (status, response.text)
    assert upload(client, jpeg).status_code == 200  # still serving


def test_no_request_reads_a_file_outside_the_collection(client, collection):
    service, photos, outside = collection
    linked = service.saved.paths.index(str(outside.resolve()))  # indexed through the link, stored resolved
    refused = client.get(f"/api/image/{linked}")
    assert refused.status_code == 403 and "outside the indexed folder" in refused.json()["detail"]
    assert client.post("/api/search", data={"id": str(linked)}).status_code == 403
    for attempt in ("/api/image/..%2F..%2Fprivate%2Fsecret.jpg", "/api/image/%2Fetc%2Fpasswd", "/api/image/../../etc/passwd",
                    f"/api/image/{outside}", "/api/image/0%2F..%2F..", "/images/../../private/secret.jpg"):
        response = client.get(attempt)
        assert response.status_code in (404, 422) and outside.read_bytes() != response.content, attempt


def test_fifty_concurrent_searches_equal_fifty_sequential_ones(collection):
    import httpx

    service, photos, _ = collection
    files = sorted(photos.rglob("[0-9].jpg"))
    requests = [("upload", files[i % len(files)]) if i % 2 else ("id", i % 18) for i in range(50)]

    def ask(request):
        kind, what = request
        with httpx.Client(base_url=base, timeout=60) as http:
            if kind == "id":
                return http.post("/api/search?k=6", data={"id": str(what)}).json()
            return http.post("/api/search?k=6", files={"image": (what.name, what.read_bytes())}).json()

    with running(service) as base:
        sequential = [ask(r) for r in requests]
        with ThreadPoolExecutor(max_workers=50) as pool:
            concurrent = list(pool.map(ask, requests))
    assert concurrent == sequential and all(len(r["hits"]) == 6 for r in concurrent)


def _browser():
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (the serve extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    return selenium, webdriver.Chrome(service=Service(driver), options=options)


def test_a_person_uploads_a_photo_in_a_real_browser_and_sees_the_hits(collection, tmp_path):
    selenium, browser = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    service, photos, _ = collection
    query = photos / "ROCK DOVE" / "2.jpg"
    expected = service.search_upload(query.read_bytes(), 10)
    try:
        with running(service) as base:
            browser.get(base + "/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#gallery .card")) == 19)
            assert "19 photos, 12-bit codes, 3 classes" in browser.find_element(By.ID, "about").text
            browser.find_element(By.ID, "file").send_keys(str(query))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .card")) == 10)
            shown = [int(c.get_attribute("data-id")) for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")]
            assert shown == [h["id"] for h in expected["hits"]]
            assert browser.find_element(By.ID, "code").text == expected["query"]["code"]
            # a click on a photo of the collection searches with it, and counts the hits of its class
            browser.find_elements(By.CSS_SELECTOR, "#gallery .card")[7].click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "summary"), "share the query's class"))
            by_id = service.search_item(7, 10)
            assert browser.find_element(By.ID, "summary").text == (
                f"top 10 photos: {by_id['matching']} of 10 share the query's class")
            browser.save_screenshot(str(tmp_path / "page.png"))
            assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        browser.quit()
