"""ensemble: a real-time neural music server for live ensembles.

Everything musical becomes a stream of integer tokens through a codec
(`ensemble.codecs`); one model type (`ensemble.model.TokenRNN`) learns and continues
any token stream; the server moves events, tokens and hidden states; the trainer turns
token streams into checkpoints.
"""

__version__ = "0.1.0"
