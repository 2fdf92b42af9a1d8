"""Audio front-ends shared by the engines (mel spectrograms)."""
