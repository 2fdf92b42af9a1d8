"""The paced output edge: the one place in a session that sleeps.

The pacer owns the *program timeline*, a continuous count of output audio
samples. Utterances arrive with pts counted from their own start; the pacer
places each one where the program is when its first sample is released, so
audio pts leave the edge gap-free across utterances, idle time and
interrupts. Video frame ``i`` of an utterance is shown at the program
sample its audio maps to (``offset + i*sr/fps``): A/V lock by construction.

Release rules (``lead`` = ``media.pacer_lead_ms``):
- speech audio leaves up to ``lead`` ahead of wall time, so a new utterance
  starts at once instead of waiting for the next frame slot;
- idle silence leaves exactly on time, which keeps the program head close to
  wall time while nobody speaks;
- after a cut (interrupt or error) the next frame leaves at once, carrying a
  short fade-out of the cut speech so there is no click;
- a speech frame whose audio is not there in time is filled with silence and
  counted as an underrun; the utterance resumes after it, video shifted along;
- with a face (``expects_video``), a new utterance's speech waits (idle
  silence goes on) until its first video frame is queued, at most
  ``media.video_wait_ms``: the voice then starts with its mouth, not before;
- video leaves when due; a frame that missed its slot is dropped; when no
  frame is due the idle source fills the slot.

Consumers ``subscribe`` and pull; each subscription is bounded and never
blocks the pacer (a stalled viewer loses its oldest media, and the count).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import numpy as np
import numpy.typing as npt

from anchor.core.channel import Overflow, media_channel
from anchor.core.clock import samples_for_ms, video_frame_span
from anchor.core.config import GraphSettings, MediaSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, EndReason, Frame, VideoFrame
from anchor.core.mailbox import Mailbox
from anchor.core.recent import RecentIds, RecentMap

_STALL_S = 0.2
_OFFSETS_KEPT = 256


class VideoLook(Protocol):
    """What every outgoing picture passes through, on the program clock (``t`` in seconds)."""

    def idle_frame(self, t: float) -> npt.NDArray[np.uint8]:
        """The picture shown at ``t`` while nothing is said."""
        ...

    def finish(self, image: npt.NDArray[np.uint8], t: float) -> npt.NDArray[np.uint8]:
        """A spoken frame as shown at ``t`` (idle motion such as blinks and head sway added)."""
        ...


class StillImage:
    """A look that shows one picture when idle and spoken frames as they are."""

    def __init__(self, image: npt.NDArray[np.uint8]) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"idle image must be uint8 (height, width, 3), got {image.dtype} {image.shape}")
        self.image = image.view()
        self.image.flags.writeable = False

    @classmethod
    def gray(cls, width: int, height: int) -> StillImage:
        return cls(np.full((height, width, 3), 96, dtype=np.uint8))

    def idle_frame(self, t: float) -> npt.NDArray[np.uint8]:
        return self.image

    def finish(self, image: npt.NDArray[np.uint8], t: float) -> npt.NDArray[np.uint8]:
        return image


class PacerListener(Protocol):
    def audio_started(self, utterance_id: str) -> None: ...
    def video_started(self, utterance_id: str) -> None: ...
    def utterance_ended(self, utterance_id: str, reason: EndReason) -> None: ...
    def silence(self) -> None: ...
    def underrun(self, utterance_id: str, seconds: float) -> None: ...
    def dropped(self, where: str, frame: Frame) -> None: ...
    def bad_frame(self, utterance_id: str, message: str) -> None: ...


class Subscription:
    """One consumer's view of the released program (a WebRTC track, a recorder).

    One reader per kind (audio, video). Bounded: a stalled reader loses its
    oldest media (counted), and never slows the pacer or other readers.
    """

    def __init__(self, *, audio_ms: float, video_frames: int) -> None:
        self._audio: Mailbox[AudioChunk] = Mailbox()
        self._video: Mailbox[VideoFrame] = Mailbox()
        self._audio_ms_max = audio_ms
        self._video_max = video_frames
        self._audio_ms = 0.0
        self.dropped_audio = 0
        self.dropped_video = 0

    @property
    def closed(self) -> bool:
        return self._audio.closed

    async def next_audio(self) -> AudioChunk | None:
        """The next released audio frame; ``None`` once the session closed."""
        chunk = await self._audio.get()
        if chunk is not None:
            self._audio_ms -= chunk.duration_ms
        return chunk

    async def next_video(self) -> VideoFrame | None:
        """The next released video frame; ``None`` once the session closed."""
        return await self._video.get()

    def deliver_audio(self, chunk: AudioChunk) -> None:
        self._audio.put(chunk)
        self._audio_ms += chunk.duration_ms
        queued = self._audio.items
        while self._audio_ms > self._audio_ms_max and len(queued) > 1:
            self._audio_ms -= queued.popleft().duration_ms
            self.dropped_audio += 1

    def deliver_video(self, frame: VideoFrame) -> None:
        self._video.put(frame)
        while len(self._video) > self._video_max:
            self._video.items.popleft()
            self.dropped_video += 1

    def clear(self, utterance_ids: frozenset[str], fade: npt.NDArray[np.float32]) -> bool:
        """Silence queued speech of ``utterance_ids`` (pts kept); True if any was queued.

        The first replaced frame fades its own speech out so the cut has no click.
        """
        replaced = False
        queued = self._audio.items
        for i, chunk in enumerate(queued):
            if chunk.utterance_id in utterance_ids and not chunk.uninterruptible:
                pcm = np.zeros_like(chunk.pcm)
                if not replaced:
                    n = min(len(fade), chunk.num_samples)
                    pcm[:n] = chunk.pcm[:n] * fade[:n]
                    replaced = True
                queued[i] = AudioChunk(pcm=pcm, sample_rate=chunk.sample_rate, pts=chunk.pts)
        kept = [f for f in self._video.items if f.utterance_id not in utterance_ids or f.uninterruptible]
        self._video.items.clear()
        self._video.items.extend(kept)
        return replaced

    def discard_queued(self) -> int:
        """Forget everything released but not yet read; returns how many frames."""
        count = len(self._audio) + len(self._video)
        self._audio.items.clear()
        self._video.items.clear()
        self._audio_ms = 0.0
        return count

    def close(self) -> None:
        self._audio.close()
        self._video.close()


class OutputPacer:
    def __init__(
        self,
        media: MediaSettings,
        graph: GraphSettings,
        *,
        look: VideoLook,
        listener: PacerListener,
        is_stale: Callable[[Frame], bool],
        is_live: Callable[[str], bool],
        expects_video: bool = False,
    ) -> None:
        self.sample_rate = media.sample_rate
        self.expects_video = expects_video
        self.video_wait_s = media.video_wait_ms / 1000
        self.frame_samples = media.audio_frame_samples
        self.fps = Fraction(media.fps)
        self.lead_s = media.pacer_lead_ms / 1000
        self.audio = media_channel(
            "audio_out",
            graph,
            Overflow.BLOCK,
            is_stale=is_stale,
            on_drop=lambda f: listener.dropped("audio_out", f),
            on_put=self.notify,
        )
        self.video = media_channel(
            "video_out",
            graph,
            Overflow.DROP_OLDEST,
            video=True,
            is_stale=is_stale,
            on_drop=lambda f: listener.dropped("video_out", f),
            on_put=self.notify,
        )
        self._look = look
        self._listener = listener
        self._is_stale = is_stale
        self._is_live = is_live
        fade_n = max(1, samples_for_ms(media.fade_ms, media.sample_rate))
        self._fade = np.linspace(1.0, 0.0, fade_n, dtype=np.float32)
        self._subs: list[Subscription] = []
        self._wake = asyncio.Event()
        self._t0 = 0.0
        self.head = 0
        self._chunk: AudioChunk | None = None
        self._pos = 0
        self._speaking = ""
        self._offsets: RecentMap[int] = RecentMap(_OFFSETS_KEPT)
        self._ended = RecentIds(_OFFSETS_KEPT)
        self._video_started = RecentIds(_OFFSETS_KEPT)
        self._cut: tuple[npt.NDArray[np.float32], set[int]] | None = None
        self._hold: tuple[str, float] | None = None  # the utterance whose speech waits for its face, since
        self._v_offset = 0
        self._v_index = 0
        self._v_last_pts = -1
        self.stalls = 0
        #: Program audio leaves silent while set (the timeline and the face go on).
        self.muted = False
        self._gain = 1.0

    # -- consumers -----------------------------------------------------------------
    def subscribe(self, *, audio_ms: float = 500.0, video_frames: int = 8) -> Subscription:
        sub = Subscription(audio_ms=audio_ms, video_frames=video_frames)
        self._subs.append(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        sub.close()

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()

    def notify(self) -> None:
        """New input is queued (called by the channels)."""
        self._wake.set()

    # -- control -------------------------------------------------------------------
    def cancel(self, utterance_ids: frozenset[str]) -> bool:
        """Cut ``utterance_ids`` from the edge at once; True if speech was cut."""

        def drop(f: Frame) -> bool:
            return f.utterance_id in utterance_ids and not f.uninterruptible

        self.audio.flush(drop)
        self.video.flush(drop)
        fade = np.zeros(0, dtype=np.float32)
        chunk = self._chunk
        if chunk is not None and drop(chunk):
            rest = np.asarray(chunk.pcm[self._pos : self._pos + len(self._fade)], dtype=np.float32)
            fade = rest * self._fade[: len(rest)]
            self._chunk = None
        was_speaking = self._speaking in utterance_ids
        if was_speaking:
            self._speaking = ""
        cleared = {id(s) for s in self._subs if s.clear(utterance_ids, self._fade)}
        if was_speaking or cleared or len(fade):
            self._cut = (fade, cleared)
            self._wake.set()
            return True
        return False

    # -- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        while True:
            now = loop.time()
            self._pump_audio(now)
            self._pump_video(now)
            self._wake.clear()
            delay = self._next_deadline(now) - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _time_of(self, program_pts: int) -> float:
        return self._t0 + program_pts / self.sample_rate

    def _has_speech(self) -> bool:
        return self._chunk is not None or self.audio.peek() is not None

    def _holding(self, now: float) -> bool:
        """Whether the next utterance's speech still waits for its first video frame."""
        head = self.audio.peek()
        if not self.expects_video or self._chunk is not None or not isinstance(head, AudioChunk):
            return False
        uid = head.utterance_id
        if uid in self._offsets or self.video.holds(lambda f: f.utterance_id == uid):
            return False
        if self._hold is None or self._hold[0] != uid:
            self._hold = (uid, now)
        return now - self._hold[1] < self.video_wait_s

    def _next_deadline(self, now: float) -> float:
        audio_due = self._time_of(self.head)
        if self._hold is not None and self._holding(now):
            audio_due = min(audio_due, self._hold[1] + self.video_wait_s)
        elif self._has_speech():
            audio_due -= self.lead_s
        return min(audio_due, self._next_video_due())

    def _pump_audio(self, now: float) -> None:
        while True:
            due = self._time_of(self.head)
            if now - due > _STALL_S:
                # The loop was blocked (GC, overload): re-anchor instead of bursting.
                self._t0 += now - due
                self.stalls += 1
                due = now
            holding = self._holding(now)
            if self._cut is not None:
                self._release_cut()
            elif (self._has_speech() and not holding and due <= now + self.lead_s) or due <= now:
                self._release_audio(speech=not holding)
            else:
                return

    def _release_cut(self) -> None:
        assert self._cut is not None
        fade, cleared = self._cut
        self._cut = None
        silent = AudioChunk(
            pcm=np.zeros(self.frame_samples, dtype=np.float32),
            sample_rate=self.sample_rate,
            pts=self.head,
        )
        faded = silent
        if len(fade):
            pcm = np.zeros(self.frame_samples, dtype=np.float32)
            n = min(len(fade), self.frame_samples)
            pcm[:n] = fade[:n]
            faded = AudioChunk(pcm=pcm, sample_rate=self.sample_rate, pts=self.head)
        self.head += self.frame_samples
        for sub in self._subs:
            sub.deliver_audio(silent if id(sub) in cleared else faded)
        self._listener.silence()

    def _next_chunk(self, position: int) -> bool:
        """Load the next queued audio chunk; False when the channel is empty."""
        while (frame := self.audio.get_nowait()) is not None:
            if self._is_stale(frame):
                continue
            if isinstance(frame, EndOfUtterance):
                self._end(frame.utterance_id, frame.reason)
                continue
            if not isinstance(frame, AudioChunk):
                continue
            problem = self._check(frame)
            if problem:
                self._listener.bad_frame(frame.utterance_id, problem)
                continue
            uid = frame.utterance_id
            if uid not in self._offsets:
                self._listener.audio_started(uid)
            self._offsets[uid] = position - frame.pts
            self._chunk, self._pos, self._speaking = frame, 0, uid
            return True
        return False

    def _check(self, chunk: AudioChunk) -> str:
        if not chunk.utterance_id:
            return "audio without an utterance id reached the output"
        if chunk.sample_rate != self.sample_rate:
            return f"audio at {chunk.sample_rate} Hz reached the {self.sample_rate} Hz output unresampled"
        if chunk.channels != 1:
            return f"audio with {chunk.channels} channels reached the mono output"
        return ""

    def _end(self, utterance_id: str, reason: EndReason) -> None:
        if self._speaking == utterance_id:
            self._speaking = ""
        self._ended.add(utterance_id)
        self._listener.utterance_ended(utterance_id, reason)

    def _release_audio(self, speech: bool = True) -> None:
        """The next frame of the program: queued speech, or silence (also while ``speech`` is held)."""
        n = self.frame_samples
        pcm = np.zeros(n, dtype=np.float32)
        filled, uid = 0, ""
        while speech and filled < n:
            if self._chunk is None and not self._next_chunk(self.head + filled):
                break
            chunk = self._chunk
            assert chunk is not None
            take = min(n - filled, chunk.num_samples - self._pos)
            pcm[filled : filled + take] = chunk.pcm[self._pos : self._pos + take]
            filled += take
            self._pos += take
            uid = uid or chunk.utterance_id
            if self._pos >= chunk.num_samples:
                self._chunk = None
        if speech and filled < n and self._speaking:
            self._listener.underrun(self._speaking, (n - filled) / self.sample_rate)
        target = 0.0 if self.muted else 1.0
        if self._gain != target or target == 0.0:  # ramp across one frame: no click
            pcm *= np.linspace(self._gain, target, n, dtype=np.float32)
            self._gain = target
        out = AudioChunk(pcm=pcm, sample_rate=self.sample_rate, pts=self.head, utterance_id=uid)
        self.head += n
        for sub in self._subs:
            sub.deliver_audio(out)

    # -- video ---------------------------------------------------------------------
    def _chain_pts(self, index: int) -> int:
        return self._v_offset + video_frame_span(index, self.sample_rate, self.fps)[0]

    def _idle_grace(self) -> float:
        """While an utterance's video plays, a late frame gets one frame time before idle fills in."""
        speaking = bool(self._speaking) and self._speaking in self._video_started
        return float(1 / self.fps) if speaking else 0.0

    def _next_video_due(self) -> float:
        head = self.video.peek()
        idle_due = self._time_of(self._chain_pts(self._v_index)) + self._idle_grace()
        if isinstance(head, VideoFrame) and (offset := self._offsets.get(head.utterance_id)) is not None:
            return min(idle_due, self._time_of(offset + head.pts))
        return idle_due

    def _pump_video(self, now: float) -> None:
        frame_s = float(1 / self.fps)
        while (frame := self.video.peek()) is not None:
            if not isinstance(frame, VideoFrame):
                self.video.get_nowait()
                continue
            uid = frame.utterance_id
            offset = self._offsets.get(uid)
            if offset is None:
                if self._is_stale(frame) or not self._is_live(uid) or uid in self._ended:
                    self.video.get_nowait()
                    self._listener.dropped("pacer.orphan_video", frame)
                    continue
                break  # its audio has not started yet
            pts = offset + frame.pts
            due = self._time_of(pts)
            if pts <= self._v_last_pts or due + frame_s < now:
                self.video.get_nowait()
                self._listener.dropped("pacer.late_video", frame)
                continue
            if due > now:
                break
            self.video.get_nowait()
            self._send_video(
                VideoFrame(
                    image=self._look.finish(frame.image, pts / self.sample_rate),
                    index=frame.index,
                    fps=frame.fps,
                    sample_rate=frame.sample_rate,
                    offset=offset,
                    utterance_id=uid,
                    uninterruptible=frame.uninterruptible,
                    stamps=frame.stamps,
                )
            )
            if uid not in self._video_started:
                self._video_started.add(uid)
                self._listener.video_started(uid)
        self._fill_idle(now)

    def _fill_idle(self, now: float) -> None:
        slot = self._time_of(self._chain_pts(self._v_index))
        if now - slot > _STALL_S:
            self._v_offset = max(self._v_last_pts + 1, int((now - self._t0) * self.sample_rate))
            self._v_index = 0
            slot = now
        if slot + self._idle_grace() > now:
            return
        image = self._look.idle_frame(self._chain_pts(self._v_index) / self.sample_rate)
        self._send_video(
            VideoFrame(
                image=image,
                index=self._v_index,
                fps=self.fps,
                sample_rate=self.sample_rate,
                offset=self._v_offset,
            )
        )

    def _send_video(self, frame: VideoFrame) -> None:
        self._v_offset, self._v_index, self._v_last_pts = frame.offset, frame.index + 1, frame.pts
        for sub in self._subs:
            sub.deliver_video(frame)
