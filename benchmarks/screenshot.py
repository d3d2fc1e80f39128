"""The search page of ``gdf-pyg serve`` as a person sees it: a photo uploaded in headless Chromium,
the hits shown, and a screenshot of the page (for the README).

Needs the serve extra and Chromium with its driver (Debian: ``apt-get install chromium
chromium-driver``). ``--quick`` makes a tiny collection and model of its own, for the tests.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from gdf_pyg.retrieval.serve import SearchService, running

from .common import base_parser, command_line


def screenshot(service: SearchService, query: Path, out: Path, k: int = 12) -> int:
    """Uploads ``query`` on the page, waits for the ``k`` hits, writes the page to ``out``; returns
    how many hits the page shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("Chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        with running(service) as base:
            browser.get(base + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#gallery .card"))
            browser.find_element(By.ID, "k").clear()
            browser.find_element(By.ID, "k").send_keys(str(k))
            browser.find_element(By.ID, "file").send_keys(str(query.resolve()))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .card")) == k)
            uploaded = [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")]
            # The same photo as one of the collection's (its class known): the page counts the hits of its class.
            item = service.saved.paths.index(str(query.resolve()))
            browser.get(f"{base}/?id={item}&k={k}")
            wait.until(lambda b: "share the query's class" in b.find_element(By.ID, "summary").text)
            wait.until(lambda b: all(i.get_attribute("complete") == "true" and int(i.get_attribute("naturalWidth")) > 0
                                     for i in b.find_elements(By.CSS_SELECTOR, "#results img, #query img")))
            clicked = [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")]
            if clicked != uploaded:
                raise SystemExit(f"the upload's hits {uploaded} differ from the collection photo's {clicked}")
            out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(out))
            return len(clicked)
    finally:
        browser.quit()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "serve")
    parser.add_argument("--index", type=Path, help="index folder (gdf-pyg index)")
    parser.add_argument("--query", type=Path, help="the photo to upload")
    parser.add_argument("--k", type=int, default=12)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from gdf_pyg.cli import main as cli
            from PIL import Image

            photos = Path(tmp) / "photos"
            for c in range(3):
                for j in range(5):
                    (photos / f"class {c}").mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (48, 40), (60 * c + 10 * j, 120, 200 - 50 * c)).save(photos / f"class {c}" / f"{j}.jpg")
            run = Path(tmp) / "run"
            assert cli(["train", "--out", str(run), "--no-progress", f"data.root={photos}", "data.dataset=folder",
                        "model.backbone.name=test_efficientnet", "model.backbone.pretrained=false", "model.img_size=64",
                        "model.graph.k=3", "optim.batch_size=4", "optim.epochs=1", "train.bits=[12]",
                        "train.frozen_backbone=true", "train.device=cpu"]) == 0
            assert cli(["index", "--checkpoint", str(run / "bits12" / "best.pt"), "--images", str(photos), "--out",
                        str(Path(tmp) / "index"), "--no-progress"]) == 0
            args.index, args.query, args.k = Path(tmp) / "index", photos / "class 1" / "2.jpg", 5
        if args.index is None or args.query is None:
            raise SystemExit("--index and --query are needed (or --quick)")
        service = SearchService.open(args.index, device="cpu")
        out = args.results / ("page_quick.png" if args.quick else f"page_{args.index.name.split('.')[0]}.png")
        shown = screenshot(service, args.query, out, args.k)
    (args.results / ("page_quick.md" if args.quick else f"page_{out.stem[5:]}.md")).write_text(
        f"# The search page\n\nCommand: `{command_line(argv, 'screenshot')}`\n\n{shown} hits shown for "
        f"`{args.query.name}`: ![the search page]({out.name})\n")
    print(f"written: {out} ({shown} hits shown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
