"""Text-to-speech voices: text front-ends (phonemes) for the acoustic engines."""
