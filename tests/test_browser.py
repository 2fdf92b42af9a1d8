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
from anchor.bench.fanout import janus_binary, running_janus, until_janus_answers
from streams.aiortc_compat import allow_loopback_candidates
from streams.settings import FanoutSettings
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


@pytest.mark.skipif(CHROMIUM is None or janus_binary() is None, reason="needs Debian's chromium and janus")
@pytest.mark.timeout(180)
async def test_chromium_watches_through_janus_and_comes_back_after_it_restarts() -> None:
    assert CHROMIUM is not None
    allow_loopback_candidates()
    with running_janus() as janus:
        settings = FanoutSettings(mode="janus", janus_url=janus.url, janus_admin_key=janus.admin_key)
        async with aiohttp.ClientSession() as http:
            await until_janus_answers(http, janus)
        async with served_anchor(256, fanout=settings) as edge, async_playwright() as pw:
            async with asyncio.timeout(30):
                await edge.server.fanouts["main"].published.wait()
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-features=WebRtcHideLocalIpsWithMdns"],
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{edge.url}/?autostart")
                async with asyncio.timeout(60):
                    while (await page.evaluate(STATS))["video"] < 25:  # noqa: ASYNC110 - polls the browser
                        await asyncio.sleep(0.2)
                assert not edge.server.peers, "no direct peer: the page watched through the SFU"
                assert len(edge.server.fanout_viewers) == 1
                await page.evaluate("window.firstPeer = window.anchorPeer")
                janus.kill()
                janus.start()
                killed = asyncio.get_running_loop().time()
                # The page notices the lost connection and subscribes again by itself.
                await page.wait_for_function(
                    "window.anchorPeer && window.anchorPeer !== window.firstPeer", timeout=90_000
                )
                async with asyncio.timeout(60):
                    while (await page.evaluate(STATS))["video"] < 25:  # noqa: ASYNC110 - polls the browser
                        await asyncio.sleep(0.2)
                back_after_s = asyncio.get_running_loop().time() - killed
                status = await page.locator("#status").inner_text()
            finally:
                await browser.close()
    assert status == "connected (through the SFU)", status
    assert back_after_s < 60, back_after_s
    print(f"chromium watching through Janus again {back_after_s:.1f} s after the kill")
