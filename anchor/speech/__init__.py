"""Speech out: text normalisation, phrase splitting, resampling and the TTS stage."""
