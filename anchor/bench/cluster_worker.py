"""A cluster worker on fake models, in a process of its own: ``python -m anchor.bench.cluster_worker``.

``anchor bench cluster`` and the cluster tests run three workers on one
2-core machine, where three real anchors (Piper, the mouth GAN, Whisper)
would not keep real time. So the speech is FakeTTS (a tone per word, 250 ms
a word, with 150 ms before an utterance's first audio, about what Piper takes
for a sentence here) and the face is the weightless animator at 256 px and
15 fps (the smallest portrait its landmarks are found on). All
the rest is the real worker: settings from the ``ANCHOR_*`` environment, the
broker, the registry, the news desk and the WebRTC edge.
"""

from __future__ import annotations

import argparse
import logging

from anchor.app.settings import load_settings
from anchor.app.worker import Programme, ProgrammeMaker, run_worker
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.face.face_stage import AnimatorDriver, FaceStage
from anchor.face.look import PortraitLook
from anchor.face.portrait import default_image, fit, make_portrait
from anchor.face.rig import MouthRig
from anchor.responders import SayResponder
from anchor.testing.fakes import FakeTTS, Faults

FIRST_AUDIO_S = 0.15


def fake_programme(size: int) -> ProgrammeMaker:
    portrait = make_portrait(fit(default_image(), (size, size)))

    def make() -> Programme:
        tts = FakeTTS("tts", ms_per_word=250, faults=Faults(first_output_s=FIRST_AUDIO_S), spoken_length=True)
        face = FaceStage(AnimatorDriver(MouthRig(portrait)))
        graph = Graph().chain(SayResponder(), tts).link(tts, AUDIO_OUT)
        graph.add(face).link(tts, face).link(face, VIDEO_OUT)
        return Programme(graph, PortraitLook(portrait))

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="the portrait's side in pixels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    settings = settings.model_copy(
        update={
            "media": settings.media.model_copy(update={"width": args.size, "height": args.size, "fps": 15})
        }
    )
    run_worker(settings, fake_programme(args.size))


if __name__ == "__main__":
    main()
