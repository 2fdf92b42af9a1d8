"""A real headless Chromium (Debian's) opens the viewer page and plays the anchor."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import aiohttp
import cv2
import pytest
from playwright.async_api import async_playwright

from anchor.app.live import LiveAnchor
from tests.edge import served_anchor
from tests.test_live import while_live

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STATS = """async () => {
  if (!window.anchorPeer) return {video: 0, audio: 0};
  const stats = await window.anchorPeer.getStats();
  let video = 0, audio = 0;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") video = r.framesDecoded || 0;
    if (r.type === "inbound-rtp" && r.kind === "audio") audio = r.totalAudioEnergy || 0;
  });
  return {video, audio};
}"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it)")
@pytest.mark.timeout(180)
async def test_chromium_decodes_the_face_and_hears_the_voice(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    async with served_anchor(512) as edge, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 600, "height": 760})
            await page.goto(f"{edge.url}/?autostart")
            async with asyncio.timeout(60):
                while (await page.evaluate(STATS))["video"] < 10:  # noqa: ASYNC110 - polls the browser
                    await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as http:
                reply = await http.post(
                    f"{edge.url}/say", json={"text": "good evening, here is the news tonight"}
                )
                assert reply.status == 202, await reply.text()
            async with asyncio.timeout(60):
                while True:
                    stats = await page.evaluate(STATS)
                    if stats["video"] > 50 and stats["audio"] > 0:
                        break
                    await asyncio.sleep(0.2)
            shot = tmp_path / "viewer.png"
            await page.locator("#video").screenshot(path=str(shot))
            if artifacts := os.environ.get("ANCHOR_ARTIFACTS"):
                shutil.copy(shot, Path(artifacts) / "viewer.png")
            captions = await page.locator("#captions").inner_text()
        finally:
            await browser.close()
    image = cv2.imread(str(shot))
    assert image is not None and image.std() > 20, "the video element shows a picture, not a blank"
    faces = cv2.CascadeClassifier(
        str(Path(cv2.__file__).parent / "data" / "haarcascade_frontalface_default.xml")
    )
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert len(faces.detectMultiScale(gray, 1.1, 5)) >= 1, "the screenshot shows the face"
    assert captions == "good evening, here is the news tonight"
    assert stats["video"] > 50 and stats["audio"] > 0


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it)")
@pytest.mark.timeout(180)
async def test_the_page_queues_news_shows_the_queue_and_asks_questions(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    seen: dict[str, str] = {}

    async def in_browser(live: LiveAnchor) -> None:
        live.desk.set_on_air(False)  # the item stays in the queue view while the page is checked
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                await page.goto(live.viewer_url.replace("?autostart&", "?"))
                await page.fill("#newstitle", "Storm warning")
                await page.fill("#newsbody", "High winds tonight. Stay indoors.")
                await page.fill("#newspriority", "7")
                await page.click("#newsform button")
                await page.wait_for_selector("#queue li.queued", timeout=10_000)
                seen["queue"] = await page.locator("#queue").inner_text()
                seen["air"] = await page.locator("#air").inner_text()
                await page.select_option("#mode", "ask")
                await page.fill("#say", "who are you?")
                await page.press("#say", "Enter")
                await page.wait_for_function("document.querySelector('#say').value === ''", timeout=10_000)
                seen["status"] = await page.locator("#status").inner_text()
            finally:
                await browser.close()

    await while_live(in_browser, tmp_path / "news.db")
    assert seen["queue"] == "Storm warning · priority 7 · queued"
    assert seen["air"] == "(off air)"
    assert not seen["status"].startswith("refused"), seen["status"]
