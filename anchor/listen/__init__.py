"""Speech in: input normalisation, voice-activity segmentation and streaming recognition."""
