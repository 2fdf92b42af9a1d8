"""Vocoders: mel spectrograms to waveforms."""
