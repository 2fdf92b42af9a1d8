"""Training our own default weights from data the project makes itself.

``anchor train data corpus|speech|face`` builds the data set (Piper reading a
phoneme-covering corpus, with the voice's own durations and mels; the default
animator's face crops over that speech), and ``anchor train acoustic|waveglow|face``
trains the models that ship in ``engines/weights``.
"""
